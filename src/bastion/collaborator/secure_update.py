"""A collaborator's training result, handed in through the round's secure aggregation session.

The collaborator only dials out, so it drives the protocol by polling: ``step()`` makes
one move (fetch the aggregator's answer to the last stage, then send its own message of
the next) and returns how long to wait before the next move, or None when it is through.
The gRPC loop sleeps in between; the in-process simulation steps many collaborators in
turn, so the same class runs in both.

Before anything leaves, the collaborator derives the session's security parameters itself
(``session_config``) and checks what the aggregator announced: it is on the roster of
the session, every participant is on the plan's roster, there are at least
``min_clients``, and the attempt number never goes back. Under central DP it clips its
own delta to the announced L2 norm, tightened by the most fixed-point rounding can add.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from bastion.compression.wire import UpdateEncoder
from bastion.errors import BastionError, ProtocolError
from bastion.plan import Plan
from bastion.privacy.dp.clipping import clip_by_global_norm
from bastion.privacy.errors import SecAggError
from bastion.privacy.secagg.client import SecAggClient
from bastion.privacy.secagg.identity import SigningIdentity
from bastion.privacy.secagg.messages import (
    KeyRoster,
    SharesForClient,
    SurvivorList,
    UnmaskingRequest,
)
from bastion.privacy.secagg.session import (
    SessionInfo,
    Step,
    quantizer_for,
    session_config,
)
from bastion.privacy.secagg.update import UpdateCodec
from bastion.protocol import StageReply
from bastion.spec.secure_aggregation import weighting_for
from bastion.tensors import Weights

log = logging.getLogger("bastion.collaborator")

_GRACE_SECONDS = 30.0


@runtime_checkable
class SecureTransport(Protocol):
    """What secure aggregation needs from a transport (gRPC or in-process)."""

    def secagg_send(
        self,
        round_number: int,
        attempt: int,
        step: Step,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> tuple[bool, str]: ...

    def secagg_fetch(self, round_number: int, attempt: int, step: Step) -> StageReply: ...


@dataclass
class SecureAggregation:
    """A collaborator's standing for secure aggregation: the plan, its identity, and the
    highest session attempt it has joined per round (an aggregator may not go back)."""

    plan: Plan
    identity: SigningIdentity
    attempts: dict[int, int] = field(default_factory=dict)


class SecureUpdate:
    """One round's update of one collaborator, moved through the session a step at a time."""

    def __init__(
        self,
        name: str,
        setup: SecureAggregation,
        transport: SecureTransport,
        round_number: int,
        global_weights: Weights,
        local_weights: Weights,
        example_count: int,
        metrics: Mapping[str, float],
        encoder: UpdateEncoder | None = None,
        retryable: tuple[type[Exception], ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        spec = setup.plan.secure_aggregation
        if spec is None:
            raise SecAggError("the plan has no secure_aggregation section")
        self.name = name
        self.round_number = round_number
        self.error: str | None = None
        self.contributed = False
        self._spec = spec
        self._setup = setup
        self._transport = transport
        self._retryable = retryable
        self._clock = clock
        self._weighting = weighting_for(setup.plan.aggregation.strategy)
        self._global = global_weights
        # The delta is computed now: a shared runner's weights change before this is sent.
        self._delta: Weights = {
            n: np.asarray(local_weights[n], np.float64) - np.asarray(g, np.float64)
            for n, g in global_weights.items()
        }
        self._weight = float(example_count)
        self._metrics = dict(metrics)
        self._encoder = encoder
        self._next = Step.SESSION
        self._attempt = 0
        self._client: SecAggClient | None = None
        self._codec: UpdateCodec | None = None
        self._clip_norm = 0.0
        self._seconds = 0.0
        self._waiting_since = clock()

    @property
    def finished(self) -> bool:
        return self.contributed or self.error is not None

    @property
    def awaiting(self) -> Step:
        """The stage whose closing answer the next ``step()`` fetches (then it sends the next)."""
        return self._next

    # ------------------------------------------------------------------ driving

    def step(self) -> float | None:
        """Make one move; the seconds to wait before the next, or None when finished."""
        if self.finished:
            return None
        started = time.perf_counter()
        try:
            reply = self._transport.secagg_fetch(self.round_number, self._attempt, self._next)
            if reply.status == "wait":
                return self._wait(reply.retry_after)
            if reply.status == "aborted":
                self._stop(f"the aggregator ended the session: {reply.reason}")
                return None
            self._answer(reply.payload)
        except self._retryable as exc:
            return self._wait(1.0, f"{exc}")
        except (SecAggError, ProtocolError, BastionError) as exc:
            self._give_up(str(exc))
            return None
        finally:
            self._seconds += time.perf_counter() - started
        self._waiting_since = self._clock()
        return None if self.finished else 0.0

    def run(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Step until finished, sleeping as the aggregator asks."""
        while (delay := self.step()) is not None:
            if delay:
                sleep(delay)

    def _answer(self, payload: bytes) -> None:
        """The aggregator closed the stage we waited on: send our message of the next one."""
        if self._next is Step.SESSION:
            self._start(SessionInfo.from_bytes(payload))
        elif self._next is Step.ADVERTISE_KEYS:
            assert self._client is not None
            shares = self._client.share_keys(KeyRoster.from_bytes(payload))
            self._send(Step.SHARE_KEYS, shares.to_bytes(), {}, then=Step.SHARE_KEYS)
        elif self._next is Step.SHARE_KEYS:
            assert self._client is not None
            vector = self._encode()
            masked = self._client.masked_input(SharesForClient.from_bytes(payload), vector)
            self._send(Step.MASKED_INPUT, masked.to_bytes(), self._metrics, then=Step.MASKED_INPUT)
        elif self._next is Step.MASKED_INPUT:
            assert self._client is not None
            signed = self._client.consistency_check(SurvivorList.from_bytes(payload))
            self._send(Step.CONSISTENCY_CHECK, signed.to_bytes(), {}, then=Step.CONSISTENCY_CHECK)
        elif self._next is Step.CONSISTENCY_CHECK:
            assert self._client is not None
            response = self._client.unmask(UnmaskingRequest.from_bytes(payload))
            total = self._client.stats.total
            overhead = {
                "secagg_seconds": self._seconds,
                "secagg_bytes_sent": float(total.bytes_sent),
                "secagg_bytes_received": float(total.bytes_received),
            }
            if self._send(Step.UNMASKING, response.to_bytes(), overhead, then=None):
                self.contributed = True
                log.info(
                    "%s: round %d: update handed in through secure aggregation (%.2fs, %d bytes sent)",
                    self.name,
                    self.round_number,
                    self._seconds,
                    total.bytes_sent,
                )

    def _send(
        self, step: Step, payload: bytes, metrics: Mapping[str, float], then: Step | None
    ) -> bool:
        accepted, reason = self._transport.secagg_send(
            self.round_number, self._attempt, step, payload, metrics
        )
        if not accepted:
            self._stop(f"the aggregator refused our {step.value} message: {reason}")
            return False
        if then is not None:
            self._next = then
        return True

    def _wait(self, delay: float, why: str = "") -> float | None:
        limit = self._spec.stage_seconds + _GRACE_SECONDS
        if self._next in (Step.SESSION, Step.ADVERTISE_KEYS):
            limit += self._setup.plan.timeouts.round_seconds  # others may still be training
        if self._clock() - self._waiting_since > limit:
            self._stop(f"no answer to the {self._next.value} stage for {limit:.0f}s {why}")
            return None
        return delay

    def _stop(self, reason: str) -> None:
        self.error = reason
        log.warning(
            "%s: round %d: secure aggregation stopped: %s", self.name, self.round_number, reason
        )
        return None

    def _give_up(self, reason: str) -> None:
        """We refuse to go on (e.g. a substituted key): tell the aggregator why, then stop."""
        self._stop(reason)
        try:
            self._transport.secagg_send(
                self.round_number, self._attempt, Step.ABORT, reason.encode()[:500], {}
            )
        except Exception as exc:  # best effort: the aggregator may be the one misbehaving
            log.debug("%s: could not report the abort: %s", self.name, exc)

    # ------------------------------------------------------------------ the session

    def _start(self, info: SessionInfo) -> None:
        """Check the announced session, derive its parameters, and advertise our keys."""
        plan = self._setup.plan
        roster = set(plan.collaborator_names())
        if info.round_number != self.round_number:
            raise ProtocolError(
                f"the session is for round {info.round_number}, not {self.round_number}"
            )
        if len(set(info.participants)) != len(info.participants):
            raise SecAggError("the session lists a participant twice")
        strangers = sorted(set(info.participants) - roster)
        if strangers:
            raise SecAggError(
                f"the session lists {strangers[:5]}, who are not on the plan's roster"
            )
        if self.name not in info.participants:
            raise SecAggError(f"{self.name} is not among the session's participants")
        last = self._setup.attempts.get(self.round_number, -1)
        if info.attempt <= last:
            raise SecAggError(
                f"the aggregator offers session attempt {info.attempt} of round "
                f"{self.round_number}, but attempt {last} was already joined"
            )
        if self._weighting == "unit" and not info.clip_norm > 0:
            raise SecAggError("central DP under secure aggregation needs a positive clip norm")
        like = self._global
        if self._encoder is not None:
            like = self._encoder.pipeline.secure_aggregation_like(self._global)
        quantizer = quantizer_for(self._spec, len(info.participants), self._spec.clip)
        self._codec = UpdateCodec(like, quantizer, self._weighting, self._spec.max_weight)
        config = session_config(
            self._spec,
            info.participants,
            info.round_number,
            info.attempt,
            self._codec.vector_length,
            plan.canonical_hash(),
        )
        identity = self._setup.identity
        self._client = SecAggClient(
            self.name, config, identity.private_key, identity.verifier, identity.credential
        )
        self._attempt = info.attempt
        self._clip_norm = info.clip_norm
        self._setup.attempts[self.round_number] = info.attempt
        advert = self._client.advertise_keys()
        self._send(Step.ADVERTISE_KEYS, advert.to_bytes(), {}, then=Step.ADVERTISE_KEYS)

    def _encode(self) -> np.ndarray:
        """Our ring vector: the (compressed, DP-clipped) delta, weighted, quantized."""
        codec = self._codec
        assert codec is not None
        delta = self._delta
        if self._encoder is not None:
            feedback = self._encoder.feedback
            delta = (
                feedback.secure_aggregation_payload(delta, self.round_number)
                if feedback is not None
                else self._encoder.pipeline.secure_aggregation_payload(delta, self.round_number)
            )
        within = True
        if self._weighting == "unit":
            bound = self._clip_norm - codec.norm_slack()
            if not bound > 0:
                raise SecAggError(
                    f"clip norm {self._clip_norm} is smaller than the fixed-point rounding "
                    f"({codec.norm_slack():.3g}); raise secure_aggregation.bits or lower clip"
                )
            delta, norm = clip_by_global_norm(delta, bound)
            within = norm <= self._clip_norm
        vector, clipped = codec.encode(delta, self._weight, within)
        self._delta = {}
        if clipped:
            log.warning(
                "%s: %d coordinates of the weighted update exceeded secure_aggregation.clip=%g "
                "and were clipped; raise clip if this recurs",
                self.name,
                clipped,
                codec.quantizer.clip,
            )
        return vector
