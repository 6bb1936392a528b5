"""Typed round events, and the observer seam that receives them.

The round engine announces what happens (a round starts, a result is accepted, a site
declines, a round closes, ...) as these events; everything that reacts — the metrics
log, the central and local DP ledgers, attestation status, and any plug-in — is a
``RoundObserver``. The engine never asks which features are on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bastion.aggregator.records import RoundProgress


@dataclass(frozen=True)
class RoundStarted:
    round: int
    final_evaluation: bool
    collaborators: tuple[str, ...]


@dataclass(frozen=True)
class ResultAccepted:
    """A task's result entered the round (``example_count`` None: hidden by secure aggregation)."""

    round: int
    collaborator: str
    task: str
    kind: str
    example_count: int | None
    metrics: Mapping[str, float]
    secure_aggregation: bool = False
    update_digest: str = ""  # tensors.weights_digest (BLAKE3) of the accepted update


@dataclass(frozen=True)
class ResultRejected:
    round: int
    collaborator: str
    task: str
    reason: str


@dataclass(frozen=True)
class TaskDeclined:
    round: int
    collaborator: str
    task: str
    reason: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class TaskFailed:
    """A task raised at a site (``error``: its type and message); the round goes on."""

    round: int
    collaborator: str
    task: str
    error: str


@dataclass(frozen=True)
class SiteLost:
    """No contact from a site for longer than ``timeouts.lost_seconds``."""

    collaborator: str
    silent_seconds: float


@dataclass(frozen=True)
class SiteBack:
    """A lost site is in contact again."""

    collaborator: str
    away_seconds: float


@dataclass(frozen=True)
class RoundRestarted:
    """A late round without a quorum starts again from its beginning."""

    round: int
    late: tuple[str, ...]


@dataclass(frozen=True)
class RoundSkipped:
    """Nobody was assigned this round (an assigner or a sample that chose nobody)."""

    round: int
    reason: str


@dataclass(frozen=True)
class ProtocolReported:
    """A round protocol's own account of the round (e.g. a secure aggregation session)."""

    round: int
    kind: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class RoundClosed:
    """The round's results are final and, for a training round, aggregated."""

    progress: RoundProgress
    round_completed: int
    summary: Mapping[str, Mapping[str, float]]
    accepted: int
    timed_out: tuple[str, ...]
    seconds: float
    model_digest: str = ""  # tensors.weights_digest (BLAKE3) of the round's global model


@dataclass(frozen=True)
class RoundReported:
    """The round's whole record: the closed round plus what every observer reports of it."""

    round: int
    record: Mapping[str, Any]


@dataclass(frozen=True)
class Checkpointed:
    """The checkpoint of ``round_completed`` is on disk; ``sha256`` is its file's digest,
    hashed as it was written."""

    round_completed: int
    finished: bool
    sha256: str


@dataclass(frozen=True)
class TrainingStopped:
    """Training ends before the plan's last round; ``record`` names the reason's kind."""

    round: int
    record: str
    reason: str


@dataclass(frozen=True)
class AttestationVerdict:
    collaborator: str
    verdict: Mapping[str, object]


@dataclass(frozen=True)
class FederationFinished:
    rounds: int
    best: float | None
    stopped: str | None = None


RoundEvent = (
    RoundStarted
    | ResultAccepted
    | ResultRejected
    | TaskDeclined
    | TaskFailed
    | SiteLost
    | SiteBack
    | RoundRestarted
    | RoundSkipped
    | ProtocolReported
    | RoundClosed
    | RoundReported
    | Checkpointed
    | TrainingStopped
    | AttestationVerdict
    | FederationFinished
)


@dataclass(frozen=True)
class TrainingStop:
    """An observer's reason to end training: the final evaluation runs next."""

    record: str
    reason: str


class RoundObserver:
    """Receives every round event; override what you need (each default does nothing).

    ``stop_training`` may end training early (a privacy budget), ``round_fields`` adds to
    each round's record in the metrics log, ``status_fields`` to ``bastion status``.
    Observers run under the engine's lock: keep them quick, and never call the engine back.
    """

    def notify(self, event: RoundEvent) -> None:
        """React to one event."""

    def stop_training(self, next_round: int) -> TrainingStop | None:
        """Why training round ``next_round`` must not run, or None."""
        return None

    def round_fields(self, closed: RoundClosed) -> dict[str, Any]:
        """Fields this observer adds to the closed round's record."""
        return {}

    def status_fields(self, round_completed: int) -> dict[str, Any]:
        """Fields this observer adds to the status file."""
        return {}

    def checkpoint_fields(self) -> dict[str, str]:
        """What this observer anchors in each checkpoint (e.g. the audit log's head)."""
        return {}

    def messages_for(self, collaborator: str) -> tuple[bytes, ...]:
        """Signed messages to hand ``collaborator`` with its next task request (receipts)."""
        return ()


def publish(observers: Sequence[RoundObserver], event: RoundEvent) -> None:
    for observer in observers:
        observer.notify(event)


__all__ = [
    "AttestationVerdict",
    "Checkpointed",
    "FederationFinished",
    "ProtocolReported",
    "ResultAccepted",
    "ResultRejected",
    "RoundClosed",
    "RoundEvent",
    "RoundObserver",
    "RoundReported",
    "RoundRestarted",
    "RoundSkipped",
    "RoundStarted",
    "SiteBack",
    "SiteLost",
    "TaskDeclined",
    "TaskFailed",
    "TrainingStop",
    "TrainingStopped",
    "publish",
]
