"""The port between one federation and every transport that reaches it.

gRPC, the in-process simulation and Ray all speak to the aggregator through
``FederationPort`` with the messages and typed refusals defined here, so no transport
imports the aggregator, and a result is taken in by one function, ``take_result``,
whichever way its bytes arrived. Each transport maps the refusals to its own terms
(the gRPC server through one table of status codes).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from bastion.errors import BastionError, ProtocolError
from bastion.framing import Chunking, Frame, assemble_frames
from bastion.spec.tasks import TaskSpec
from bastion.tensors import TensorSpec, Weights

# --------------------------------------------------------------------------- refusals


class Refused(BastionError):
    """The aggregator refuses a caller's request; the message says why and what to do."""


class Unauthenticated(Refused):
    """The caller's identity could not be established (no or wrong certificate)."""


class UnknownCollaborator(Refused):
    """The caller's certified name is not on the plan's roster."""


class NotAssigned(Refused):
    """The caller asked for a round or task it was not assigned."""


class RoundOver(NotAssigned):
    """The round the caller works on closed without it (it was late, lost or partitioned):
    not a fault of the caller's; it drops the round and asks for its next task."""


class NotAttested(Refused):
    """A collaborator asked for the model or sent a result before proving its enclave."""


class PlanMismatch(Refused):
    """The caller runs another plan or workspace than the aggregator."""


class NotConfigured(Refused):
    """The caller asked for a feature this federation's plan does not use."""


class CannotServe(Refused):
    """The aggregator cannot answer now for a reason of its own (e.g. no evidence)."""


class Busy(Refused):
    """The caller already holds as many streams or uploads as one identity may."""


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Assignment:
    """The answer to "what should I do now?"."""

    action: Literal["run", "wait", "done"]
    round: int = 0
    tasks: tuple[TaskSpec, ...] = ()
    retry_after: float = 0.5
    total_rounds: int = 0
    #: Signed receipts for this caller's earlier updates (audit log records), if any.
    receipts: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ResultHeader:
    """What comes before a result's tensors: which task of which round, and its figures.

    ``declined`` carries the reason when the collaborator will not run the task (its local
    privacy budget), ``failed`` the error when the task raised at the site; neither has
    tensors.
    """

    round: int
    task: str
    example_count: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    declined: str | None = None
    failed: str | None = None


class Ack(NamedTuple):
    """The aggregator's answer to a result or a protocol message."""

    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class StageReply:
    """The answer to a poll in an interactive round protocol (secure aggregation's stages):
    the payload, "wait and ask again", or "aborted" with the reason."""

    status: Literal["ready", "wait", "aborted"]
    payload: bytes = b""
    retry_after: float = 0.5
    reason: str = ""


# --------------------------------------------------------------------------- the port


class ResultSink(Protocol):
    """What ``take_result`` needs: the aggregator's result operations and its size limit."""

    @property
    def max_update_bytes(self) -> int:
        """The most bytes one update may take on the wire."""
        ...

    def check_result_allowed(self, collaborator: str, round_number: int, task: str) -> TaskSpec: ...

    def submit_result(
        self,
        collaborator: str,
        round_number: int,
        task_name: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> Ack: ...

    def reject_result(
        self, collaborator: str, round_number: int, task: str, reason: str
    ) -> Ack: ...

    def decline_task(
        self,
        collaborator: str,
        round_number: int,
        task_name: str,
        reason: str,
        metrics: Mapping[str, float],
    ) -> Ack: ...

    def fail_task(self, collaborator: str, round_number: int, task_name: str, error: str) -> Ack:
        """The task raised at the site: the round goes on without the rest of its work."""
        ...


@runtime_checkable
class KnowsUpdateSpec(Protocol):
    """A result sink that knows, before any tensor arrives, what a task's tensors must be.

    ``take_result`` then checks each tensor header against it as it arrives (name, dtype,
    shape), so nothing is allocated for a tensor the model does not have. ``None``: the
    payload's layout is not the model's (a compressed update); only its size is bounded.
    """

    def update_spec(self, task: TaskSpec) -> Sequence[TensorSpec] | None: ...


@runtime_checkable
class FoldsResults(Protocol):
    """A result sink that folds a training result in chunk by chunk as its frames stream,
    never assembling the whole update (``aggregator/streaming.py``), with the same checks."""

    def folds(self, task: TaskSpec) -> bool:
        """Whether a result of ``task`` (already allowed) is folded as it streams."""
        ...

    def fold_result(
        self, collaborator: str, header: ResultHeader, task: TaskSpec, frames: Iterable[Frame]
    ) -> Ack: ...


@runtime_checkable
class ServesOneModel(Protocol):
    """A port whose downloads of a round share their bytes, so a transport may encode them
    once per round instead of once per download."""

    def shared_model(self, collaborator: str, round_number: int) -> tuple[Hashable, int] | None:
        """A key naming the bytes this download gets (equal keys, equal bytes) and their size;
        None where this collaborator's model is its own (a carried task's older model, a coded
        downlink): the transport then encodes it for this download alone."""
        ...


class FederationPort(ResultSink, Protocol):
    """The aggregator-side operations a transport may call, with the caller's certified name."""

    def check_member(self, collaborator: str) -> None:
        """Raise ``UnknownCollaborator`` unless the caller is on the roster (reads nothing)."""
        ...

    @property
    def chunking(self) -> Chunking:
        """How the model is cut into wire frames (and results, by in-process clients)."""
        ...

    def get_tasks(self, collaborator: str) -> Assignment: ...

    def model_frames(self, collaborator: str, round_number: int) -> Iterator[Frame]: ...

    def heartbeat(self, collaborator: str, round_number: int) -> int:
        """The site is alive (e.g. training); returns the current round."""
        ...

    def stage_payload_limit(
        self, collaborator: str, round_number: int, attempt: int, step: str
    ) -> int: ...

    def stage_send(
        self,
        collaborator: str,
        round_number: int,
        attempt: int,
        step: str,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> Ack: ...

    def stage_fetch(
        self, collaborator: str, round_number: int, attempt: int, step: str
    ) -> StageReply: ...


class AttestationPort(Protocol):
    """The aggregator's attestation gate as transports see it (``aggregator/attestation.py``)."""

    certificate_pem: bytes

    def prove(self, collaborator: str, nonce: bytes) -> tuple[Any, bytes]:
        """Our evidence over the caller's nonce, and a fresh nonce for the caller's evidence."""
        ...

    def admit(
        self, collaborator: str, certificate: Any, kind: str, quote: bytes, nonce: bytes
    ) -> object:
        """Verify the caller's evidence; raises a ``BastionError`` saying why it failed."""
        ...

    def require(self, collaborator: str, certificate: Any) -> None:
        """Raise ``NotAttested`` unless the caller attested with the certificate it uses now."""
        ...


def take_result(
    port: ResultSink, collaborator: str, header: ResultHeader, frames: Iterable[Frame]
) -> Ack:
    """Take one result in: refuse it before reading if it is not expected, rebuild its
    tensors from untrusted frames within the size limit, then hand it to the federation
    (or let a ``FoldsResults`` sink fold it in as it streams, under the same checks).

    Every transport calls this; a malformed stream is a rejected result (the round goes
    on), a result the caller may not send is a ``Refused`` raised before any tensor is read.
    """
    metrics = {str(key): float(value) for key, value in header.metrics.items()}
    if header.failed is not None:
        if next(iter(frames), None) is not None:
            raise ProtocolError("a failed task carries no tensors")
        return port.fail_task(collaborator, header.round, header.task, header.failed)
    if header.declined is not None:
        if next(iter(frames), None) is not None:
            raise ProtocolError("a declined task carries no tensors")
        return port.decline_task(collaborator, header.round, header.task, header.declined, metrics)
    task = port.check_result_allowed(collaborator, header.round, header.task)
    if isinstance(port, FoldsResults) and port.folds(task):
        return port.fold_result(collaborator, header, task, frames)
    expected = port.update_spec(task) if isinstance(port, KnowsUpdateSpec) else None
    try:
        received = assemble_frames(frames, port.max_update_bytes, expected)
    except ProtocolError as exc:
        return port.reject_result(collaborator, header.round, header.task, str(exc))
    weights = received if task.kind == "train" or received else None
    return port.submit_result(
        collaborator, header.round, header.task, int(header.example_count), metrics, weights
    )
