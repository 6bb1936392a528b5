"""How a training result leaves the site: one object, chosen once from the plan.

- ``SendWeights``: the trained model as it is (no compression, no secure aggregation).
- ``SendCompressed``: the delta to the round's model through the plan's compression
  pipeline, with error feedback (``bastion.compression.wire.UpdateEncoder``).
- ``SendSecurely``: delta, compression, clipping, quantization and masking through the
  round's secure aggregation session (``SecureUpdate``); the update is handed back to be
  driven after the round's other tasks.

The collaborator loop asks its path to ``hand_in`` each training result and reads the
``Handover``: accepted or not, and the secure update left to drive, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bastion.collaborator.secure_update import SecureAggregation, SecureTransport, SecureUpdate
from bastion.compression.wire import UpdateEncoder
from bastion.errors import BastionError
from bastion.runners.base import TaskResult
from bastion.tensors import Weights


class ResultChannel(Protocol):
    """Where plain and compressed results go: the transport's ``send_result``."""

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]: ...


@dataclass(frozen=True)
class Handover:
    """What became of a training result: accepted now, refused (``reason``), or handed to
    the round's secure aggregation session (``session``), which settles after the round."""

    accepted: bool
    reason: str = ""
    session: SecureUpdate | None = None


class UpdatePath(Protocol):
    """The way this site's training results leave it."""

    def hand_in(
        self,
        round_number: int,
        task: str,
        result: TaskResult,
        global_weights: Weights,
        weights: Weights,
    ) -> Handover:
        """Send (or start sending) the model ``weights`` trained from ``global_weights``."""
        ...


class SendWeights:
    """The trained model goes to the aggregator as it is."""

    def __init__(self, channel: ResultChannel) -> None:
        self._channel = channel

    def hand_in(
        self,
        round_number: int,
        task: str,
        result: TaskResult,
        global_weights: Weights,
        weights: Weights,
    ) -> Handover:
        accepted, reason = self._channel.send_result(
            round_number, task, result.example_count, result.metrics, weights
        )
        return Handover(accepted, reason)


class SendCompressed:
    """The delta to the round's model goes through the plan's compression pipeline.

    The encoder is kept across rounds: its error-feedback residual is what earlier
    rounds did not send yet.
    """

    def __init__(self, channel: ResultChannel, encoder: UpdateEncoder) -> None:
        self._channel = channel
        self.encoder = encoder

    def hand_in(
        self,
        round_number: int,
        task: str,
        result: TaskResult,
        global_weights: Weights,
        weights: Weights,
    ) -> Handover:
        payload = self.encoder.encode(weights, global_weights, round_number)
        accepted, reason = self._channel.send_result(
            round_number, task, result.example_count, result.metrics, payload
        )
        return Handover(accepted, reason)


class SendSecurely:
    """The update goes through the round's secure aggregation session, after the round's
    other tasks (the caller drives the returned ``SecureUpdate``)."""

    def __init__(
        self,
        name: str,
        setup: SecureAggregation,
        transport: object,
        encoder: UpdateEncoder | None,
        retryable: tuple[type[Exception], ...],
    ) -> None:
        self._name = name
        self._setup = setup
        self._transport = transport
        self._encoder = encoder
        self._retryable = retryable

    def hand_in(
        self,
        round_number: int,
        task: str,
        result: TaskResult,
        global_weights: Weights,
        weights: Weights,
    ) -> Handover:
        transport = self._transport
        if not isinstance(transport, SecureTransport):
            raise BastionError(f"{self._name}: this transport cannot do secure aggregation")
        session = SecureUpdate(
            self._name,
            self._setup,
            transport,
            round_number,
            global_weights,
            weights,
            result.example_count,
            result.metrics,
            encoder=self._encoder,
            retryable=self._retryable,
        )
        return Handover(True, session=session)
