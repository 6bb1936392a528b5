"""The aggregator's side of one round's secure aggregation session, over a pull transport.

Collaborators only dial out, so each protocol stage is: every participant *sends* its
message, then *polls* until the aggregator closes the stage and has its answer. A stage
closes as soon as everyone still expected has sent, or at its deadline with whoever did
(the protocol tolerates up to n - t dropouts per neighbourhood): the advertise stage waits
for training, until ``timeouts.round_seconds`` after the round started; each later stage
waits ``secure_aggregation.stage_seconds``. A collaborator that goes silent in the
consistency check counts as one that dropped after its masked input: its input stays in
the sum and its self-mask is removed with its peers' shares. Masked inputs are added to
one running sum as they arrive, so memory is O(model). The session ends with a ``SecureSum`` or a failure;
on failure nothing was unmasked and the round's training counts for nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence

from bastion.algorithms.base import Strategy
from bastion.algorithms.secure_sum import secure_sum_strategy
from bastion.compression.pipeline import Pipeline
from bastion.errors import BastionError, ProtocolError
from bastion.privacy.errors import SecAggAborted, SecAggError
from bastion.privacy.secagg.keys import IdentityVerifier
from bastion.privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    SharesForClient,
    UnmaskingResponse,
)
from bastion.privacy.secagg.server import SecAggServer
from bastion.privacy.secagg.session import (
    SessionInfo,
    Step,
    quantizer_for,
    session_config,
)
from bastion.privacy.secagg.update import SecureSum, UpdateCodec, Weighting
from bastion.protocol import StageReply
from bastion.spec.secure_aggregation import SecureAggregationSpec
from bastion.tensors import Weights, bytes_digest

log = logging.getLogger("bastion.aggregator")

_ORDER = [
    Step.ADVERTISE_KEYS,
    Step.SHARE_KEYS,
    Step.MASKED_INPUT,
    Step.CONSISTENCY_CHECK,
    Step.UNMASKING,
]
_SMALL_MESSAGE = 64 * 1024
_PER_PEER_BYTES = 4096
MAX_METRICS = 64


class SecureRound:
    """One session: who takes part, which stage is open, and what came of it."""

    def __init__(
        self,
        spec: SecureAggregationSpec,
        participants: Sequence[str],
        round_number: int,
        attempt: int,
        model: Weights,
        weighting: Weighting,
        clip_norm: float,
        federation_id: str,
        training_deadline: float,
        clock: Callable[[], float],
        verifier: IdentityVerifier | None = None,
        poll_seconds: float = 0.5,
        min_contributors: int = 1,
        pipeline: Pipeline | None = None,
    ) -> None:
        self.spec = spec
        self.info = SessionInfo(round_number, attempt, tuple(sorted(participants)), clip_norm)
        self._clock = clock
        self._poll = poll_seconds
        self._min_contributors = min_contributors
        self.outcome: SecureSum | None = None
        self.failure: str | None = None
        self.metrics: dict[str, dict[str, float]] = {}
        #: the digest of each masked input, for the audit log (what the aggregator received).
        self.input_digests: dict[str, str] = {}
        self.overhead: dict[str, dict[str, float]] = {}
        self.gone: dict[str, str] = {}
        self.settled = False  # the aggregator has folded the outcome into its round
        self._stage = Step.ADVERTISE_KEYS
        self._deadline = training_deadline
        self._sent: dict[Step, set[str]] = {step: set() for step in _ORDER}
        self._expected: set[str] = set(self.info.participants)
        self._roster_bytes = b""
        self._shares: dict[str, SharesForClient] = {}
        self._survivor_bytes = b""
        self._requests: dict[str, bytes] = {}
        self._model = model
        self._pipeline = pipeline
        like = pipeline.secure_aggregation_like(model) if pipeline is not None else model
        n = len(self.info.participants)
        self.codec: UpdateCodec | None = None
        self.server: SecAggServer | None = None
        try:
            quantizer = quantizer_for(spec, max(n, 2), spec.clip)
            self.codec = UpdateCodec(like, quantizer, weighting, spec.max_weight)
            config = session_config(
                spec,
                self.info.participants,
                round_number,
                attempt,
                self.codec.vector_length,
                federation_id,
            )
            self.server = SecAggServer(config, verifier)
        except SecAggError as exc:
            self.fail(str(exc))

    # ------------------------------------------------------------------ queries

    @property
    def finished(self) -> bool:
        return self.outcome is not None or self.failure is not None

    @property
    def stage(self) -> Step:
        return self._stage

    @property
    def contributors(self) -> tuple[str, ...]:
        """Who sent masked input that is inside the unmasked sum."""
        return tuple(sorted(self.metrics)) if self.outcome is not None else ()

    def joined(self, name: str) -> bool:
        """Whether ``name`` advertised keys (it has handed its training result to the session)."""
        return name in self._sent[Step.ADVERTISE_KEYS]

    def payload_limit(self, step: Step) -> int:
        """The most bytes a collaborator's message of ``step`` may have (checked before reading)."""
        peers = len(self.info.participants)
        if step is Step.MASKED_INPUT and self.codec is not None:
            word = self.spec.modulus_bits // 8
            return self.codec.vector_length * word + _SMALL_MESSAGE
        if step in (Step.SHARE_KEYS, Step.UNMASKING):
            return peers * _PER_PEER_BYTES + _SMALL_MESSAGE
        return _SMALL_MESSAGE

    def report(self) -> dict[str, object]:
        """The session for the metrics log: outcome, who, and what it cost the aggregator."""
        clients = list(self.overhead.values())
        fields: dict[str, object] = {
            "round": self.info.round_number,
            "attempt": self.info.attempt,
            "participants": len(self.info.participants),
            "outcome": "ok" if self.outcome is not None else "aborted",
            "reason": self.failure or "",
            "contributors": list(self.contributors),
            "dropped": dict(sorted(self.gone.items())),
            "server": self.server.stats.as_dict() if self.server else {},
            "client_seconds_mean": _mean(c.get("secagg_seconds", 0.0) for c in clients),
            "client_bytes_sent_mean": _mean(c.get("secagg_bytes_sent", 0.0) for c in clients),
        }
        if self.server is not None:
            config = self.server.config
            fields.update(threshold=config.threshold, neighbours=config.neighbours)
        if self.codec is not None:
            fields.update(bits=self.codec.quantizer.bits, clip=self.codec.quantizer.clip)
        if self.outcome is not None:
            outcome = self.outcome
            fields.update(
                total_weight=outcome.total_weight,
                error_bound_sum=outcome.error_bound,
                error_bound_average=outcome.error_bound / max(outcome.total_weight, 1e-300),
                unclipped=outcome.unclipped,
            )
        return fields

    # ------------------------------------------------------------------ transport calls

    def fetch(self, name: str, step: Step) -> StageReply:
        """The answer that closes ``step`` for ``name``, or "wait", or "aborted"."""
        if name not in self.info.participants:
            return StageReply("aborted", reason=f"{name} is not part of this session")
        if step is Step.SESSION:
            return StageReply("ready", self.info.to_bytes())
        if self.failure is not None:
            return StageReply("aborted", reason=self.failure)
        if name in self.gone:
            return StageReply("aborted", reason=f"{name} left the session: {self.gone[name]}")
        if step not in _ORDER[:-1]:
            return StageReply("aborted", reason=f"nothing to fetch for stage {step.value}")
        if _ORDER.index(self._stage) <= _ORDER.index(step):
            return StageReply("wait", retry_after=self._poll)
        if step is Step.ADVERTISE_KEYS and name in self._sent[Step.ADVERTISE_KEYS]:
            return StageReply("ready", self._roster_bytes)
        if step is Step.SHARE_KEYS and name in self._shares:
            return StageReply("ready", self._shares[name].to_bytes())
        if step is Step.MASKED_INPUT and name in self._sent[Step.MASKED_INPUT]:
            return StageReply("ready", self._survivor_bytes)
        if step is Step.CONSISTENCY_CHECK and name in self._requests:
            return StageReply("ready", self._requests[name])
        return StageReply(
            "aborted", reason=f"the {step.value} stage closed without {name}'s message"
        )

    def send(
        self, name: str, step: Step, payload: bytes, metrics: Mapping[str, float]
    ) -> tuple[bool, str]:
        """Take ``name``'s message of ``step``; (accepted, reason). A refusal drops ``name``."""
        if self.finished or self.server is None:
            return False, f"the session is over: {self.failure or 'finished'}"
        if step is Step.ABORT:
            reason = payload.decode("utf-8", errors="replace")[:500]
            log.warning("secure aggregation: %s gave up: %s", name, reason)
            self.exclude(name, f"gave up: {reason}")
            return True, ""
        if step is not self._stage:
            return False, f"the {self._stage.value} stage is open, not {step.value}"
        if name not in self._expected or name in self._sent[step]:
            return False, f"{name} may not send a {step.value} message now"
        try:
            self._receive(name, step, payload, metrics)
        except ProtocolError as exc:
            self.exclude(name, f"bad {step.value} message: {exc}")
            return False, str(exc)
        except SecAggAborted as exc:
            self.fail(str(exc))
            return False, str(exc)
        self._sent[step].add(name)
        self._maybe_close()
        return True, ""

    def exclude(self, name: str, reason: str) -> None:
        """``name`` is out of the session (gave up, sent garbage, or its result was rejected)."""
        if name not in self.info.participants or name in self.gone or self.finished:
            return
        self.gone[name] = reason
        self._expected.discard(name)
        self._maybe_close()

    def tick(self) -> None:
        """Close the open stage if its deadline has passed."""
        if not self.finished and self._clock() >= self._deadline:
            missing = sorted(self._expected - self._sent[self._stage])
            if missing:
                log.warning(
                    "secure aggregation round %d: %s stage timed out without %s",
                    self.info.round_number,
                    self._stage.value,
                    missing,
                )
            for late in missing:
                self.gone[late] = f"no {self._stage.value} message before the deadline"
            self._close()

    # ------------------------------------------------------------------ internals

    def _receive(self, name: str, step: Step, payload: bytes, metrics: Mapping[str, float]) -> None:
        server = self.server
        assert server is not None
        if step is Step.ADVERTISE_KEYS:
            server.receive_advertise(name, AdvertiseKeys.from_bytes(payload))
        elif step is Step.SHARE_KEYS:
            server.receive_shares(name, EncryptedShares.from_bytes(payload))
        elif step is Step.MASKED_INPUT:
            checked = _checked_metrics(metrics)
            server.receive_masked_input(name, MaskedInput.from_bytes(payload))
            self.metrics[name] = checked
            self.input_digests[name] = bytes_digest(payload)
        elif step is Step.CONSISTENCY_CHECK:
            server.receive_signature(name, ConsistencySignature.from_bytes(payload))
        elif step is Step.UNMASKING:
            checked = _checked_metrics(metrics)
            server.receive_unmasking(name, UnmaskingResponse.from_bytes(payload))
            self.overhead[name] = checked

    def _maybe_close(self) -> None:
        if not self.finished and self._expected <= self._sent[self._stage]:
            self._close()

    def _close(self) -> None:
        server = self.server
        assert server is not None
        stage = self._stage
        try:
            if stage is Step.ADVERTISE_KEYS:
                self._roster_bytes = server.close_advertise().to_bytes()
            elif stage is Step.SHARE_KEYS:
                self._shares = server.close_shares()
            elif stage is Step.MASKED_INPUT:
                senders = self._sent[Step.MASKED_INPUT]
                if len(senders) < self._min_contributors:
                    raise server.abort(
                        f"only {len(senders)} collaborators sent masked input, fewer than "
                        f"timeouts.min_results={self._min_contributors}; nothing was unmasked"
                    )
                self._survivor_bytes = server.close_masked_inputs().to_bytes()
            elif stage is Step.CONSISTENCY_CHECK:
                requests = server.close_consistency()
                distinct = {id(r): r for r in requests.values()}  # often one, shared by all
                encoded = {key: r.to_bytes() for key, r in distinct.items()}
                self._requests = {name: encoded[id(r)] for name, r in requests.items()}
            else:
                self._finalize()
                return
        except SecAggAborted as exc:
            self.fail(str(exc))
            return
        index = _ORDER.index(stage)
        self._stage = _ORDER[index + 1]
        self._expected = self._next_expected(stage) - self.gone.keys()
        self._deadline = self._clock() + self.spec.stage_seconds
        self._maybe_close()

    def _next_expected(self, closed: Step) -> set[str]:
        if closed is Step.SHARE_KEYS:
            return set(self._shares)
        if closed is Step.CONSISTENCY_CHECK:
            return set(self._requests)
        return set(self._sent[closed])

    def _finalize(self) -> None:
        server, codec = self.server, self.codec
        assert server is not None and codec is not None
        try:
            result = server.finalize()
            outcome = codec.decode(result.total, len(result.contributors))
            if self._pipeline is not None:  # the sum of compressed payloads, back to the model
                dense = self._pipeline.decode_secure_sum(
                    outcome.delta_sum, self._model, self.info.round_number
                )
                outcome = dataclasses.replace(outcome, delta_sum=dense)
        except (SecAggError, BastionError) as exc:
            self.fail(str(exc))
            return
        self.metrics = {name: self.metrics.get(name, {}) for name in result.contributors}
        self.outcome = outcome
        self._stage = Step.UNMASKING

    def fail(self, reason: str) -> None:
        """End the session unmasked: nothing more is accepted, every poll hears the reason."""
        if self.failure is None:
            self.failure = reason
            if self.server is not None:
                self.server.abort(reason)
            log.error("secure aggregation round %d aborted: %s", self.info.round_number, reason)


def _checked_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if len(metrics) > MAX_METRICS:
        raise ProtocolError(f"{len(metrics)} metrics sent; at most {MAX_METRICS} allowed")
    checked: dict[str, float] = {}
    for key, value in metrics.items():
        if not key or len(key) > 128 or not math.isfinite(value):
            raise ProtocolError(
                f"metric {key[:40]!r} is not a 1..128 character name with a finite value"
            )
        checked[key] = float(value)
    return checked


def _mean(values: object) -> float:
    items = list(values)  # type: ignore[call-overload]
    return float(sum(items) / len(items)) if items else 0.0


def fold_in(strategy: Strategy, outcome: SecureSum) -> None:
    """Hand the unmasked sum to the strategy; a ``BastionError`` if it cannot take it."""
    try:
        secure_sum_strategy(strategy).accumulate_secure_sum(
            outcome.delta_sum, outcome.total_weight, outcome.contributors, outcome.unclipped
        )
    except (ValueError, RuntimeError) as exc:
        raise BastionError(f"the secure sum could not be aggregated: {exc}") from None
