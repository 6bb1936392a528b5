"""The round-protocol seam: how one round's results are collected and folded into the strategy.

The engine opens a protocol for every round (``ProtocolFactory``), hands it each
accepted result, tells it who dropped out, and asks whether the round may close.
``StreamingRound`` folds each training result in as it arrives; secure aggregation
(``bastion.aggregator.secure_protocol``) collects masked inputs through interactive
stages instead. A new protocol is a new class with these methods: no engine edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bastion.aggregator.events import RoundEvent
from bastion.aggregator.records import RoundProgress
from bastion.algorithms.base import Strategy
from bastion.plan import Plan
from bastion.protocol import Ack, StageReply
from bastion.spec.tasks import TaskSpec
from bastion.tensors import Weights

if TYPE_CHECKING:  # Python 3.13's typing.TypeIs; only the type checker needs it
    from typing_extensions import TypeIs


@dataclass(frozen=True)
class RoundContext:
    """What a protocol is opened with: the round, its starting model, and the engine's services."""

    plan: Plan
    progress: RoundProgress
    model: Weights
    strategy: Strategy
    clock: Callable[[], float]
    publish: Callable[[RoundEvent], None]


class RoundProtocol(Protocol):
    """One round's collection of results; the engine owns the lock around every call."""

    def refusal(self, collaborator: str, task: TaskSpec) -> str | None:
        """Why ``collaborator`` may not send this result directly (checked before it is read)."""
        ...

    def on_result(
        self, collaborator: str, task: TaskSpec, example_count: int, weights: Weights | None
    ) -> None:
        """An accepted result of this round (weights only for training tasks)."""
        ...

    def exclude(self, collaborator: str, reason: str) -> None:
        """``collaborator`` is out of this round (its result was rejected, or it declined)."""
        ...

    def is_settled(self) -> bool:
        """Whether the protocol waits for nothing more (the engine also waits for tasks)."""
        ...

    def blocks_timeout(self) -> bool:
        """Advance the protocol's own deadlines; True while they, not the round's, apply."""
        ...

    def closes_late_round(self) -> bool:
        """Whether a round past its deadline closes whatever the number of results."""
        ...

    def close(self, summary: dict[str, dict[str, float]]) -> None:
        """The round closes: adjust its metric summary (e.g. totals only the protocol knows)."""
        ...


@runtime_checkable
class InteractiveRound(Protocol):
    """A protocol that exchanges stage messages with collaborators (secure aggregation)."""

    def stage_payload_limit(self, collaborator: str, attempt: int, step: str) -> int: ...

    def stage_send(
        self,
        collaborator: str,
        attempt: int,
        step: str,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> Ack: ...

    def stage_fetch(self, collaborator: str, attempt: int, step: str) -> StageReply: ...


@runtime_checkable
class OverlappingRound(Protocol):
    """A protocol whose round may close while assigned sites still work (asynchronous
    aggregation): their work carries over, and its results are taken into a later round.

    The engine then closes the round when ``is_settled`` says so, whoever is still
    working; a site with carried work is not assigned more until it is in; the model a
    carried task started from is kept (one per round with work out) to serve and check it.
    """

    def admits(self, busy: int) -> bool:
        """Whether one more site may start work while ``busy`` sites work (a concurrency cap)."""
        ...

    def carried_refusal(self, collaborator: str, task: TaskSpec, origin: int) -> str | None:
        """Why a result of work assigned in the earlier round ``origin`` is not taken now."""
        ...

    def on_carried_result(
        self,
        collaborator: str,
        task: TaskSpec,
        example_count: int,
        weights: Weights | None,
        origin: int,
        origin_model: Weights,
    ) -> None:
        """An accepted result of work assigned in round ``origin`` (from ``origin_model``)."""
        ...


_OVERLAPPING_CLASSES: dict[type, bool] = {}


def is_overlapping(protocol: object) -> TypeIs[OverlappingRound]:
    """``isinstance(protocol, OverlappingRound)``, answered once per class: a runtime
    protocol check costs tens of microseconds, and the engine asks on every request."""
    kind = type(protocol)
    known = _OVERLAPPING_CLASSES.get(kind)
    if known is None:
        known = _OVERLAPPING_CLASSES[kind] = isinstance(protocol, OverlappingRound)
    return known


ProtocolFactory = Callable[[RoundContext], RoundProtocol]


class StreamingRound:
    """Plain federated rounds: each training result is folded into the strategy on arrival."""

    def __init__(self, context: RoundContext) -> None:
        self._strategy = context.strategy

    def refusal(self, collaborator: str, task: TaskSpec) -> str | None:
        return None

    def on_result(
        self, collaborator: str, task: TaskSpec, example_count: int, weights: Weights | None
    ) -> None:
        if task.kind == "train":
            assert weights is not None
            self._strategy.accumulate(collaborator, weights, float(example_count))

    def exclude(self, collaborator: str, reason: str) -> None:
        return None

    def is_settled(self) -> bool:
        return True

    def blocks_timeout(self) -> bool:
        return False

    def closes_late_round(self) -> bool:
        return False

    def close(self, summary: dict[str, dict[str, float]]) -> None:
        return None
