"""What aggregator and collaborators agree on for one round's secure aggregation session.

The aggregator announces only who takes part (``SessionInfo``). Everything that decides
how safe the round is — the threshold, the SecAgg+ graph, the fixed-point precision and
the session id — each collaborator derives itself from the plan and that roster
(``session_config``, ``quantizer_for``), so an aggregator cannot quietly lower them.

Transports carry opaque bytes between the two sides: ``Step`` names what a call is about
and ``StageReply`` is the aggregator's answer to a poll.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from bastion.errors import ProtocolError
from bastion.privacy.errors import SecAggError
from bastion.privacy.secagg.config import SecAggConfig, session_id_for
from bastion.privacy.secagg.quantize import FixedPointQuantizer
from bastion.privacy.secagg.wire import Reader, Writer
from bastion.spec.secure_aggregation import SecureAggregationSpec

_FLOAT64_EXACT_BITS = 53


class Step(enum.Enum):
    """What one transport call is about.

    A collaborator *sends* its message of a stage and then *fetches* the aggregator's
    answer that closes it: ``SESSION`` → SessionInfo, ``ADVERTISE_KEYS`` → KeyRoster,
    ``SHARE_KEYS`` → SharesForClient, ``MASKED_INPUT`` → SurvivorList,
    ``CONSISTENCY_CHECK`` → UnmaskingRequest. ``ABORT`` is sent by a collaborator that
    gives up (with its reason), so nobody waits for it.
    """

    SESSION = "session"
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"
    ABORT = "abort"


@dataclass(frozen=True)
class SessionInfo:
    """The round's session as the aggregator announces it.

    ``clip_norm`` is the L2 bound each client applies to its own delta when the strategy
    is central DP (0 when there is none): with secure aggregation the server never sees
    one update, so per-update clipping moves to the clients.
    """

    round_number: int
    attempt: int
    participants: tuple[str, ...]
    clip_norm: float = 0.0

    KIND: ClassVar[bytes] = b"secagg/session-info"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        writer.uint(self.round_number)
        writer.uint(self.attempt)
        writer.count(len(self.participants))
        for name in self.participants:
            writer.text(name)
        writer.blob(struct.pack(">d", self.clip_norm))
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionInfo:
        reader = Reader(data, "SessionInfo")
        if reader.blob(64) != cls.KIND:
            raise ProtocolError("expected a SessionInfo message")
        round_number, attempt = reader.uint(), reader.uint()
        participants = tuple(reader.text() for _ in range(reader.count()))
        raw = reader.blob(8)
        reader.finish()
        if len(raw) != 8:
            raise ProtocolError("SessionInfo: clip norm is not a float64")
        (clip_norm,) = struct.unpack(">d", raw)
        if not (math.isfinite(clip_norm) and clip_norm >= 0):
            raise ProtocolError(f"SessionInfo: clip norm {clip_norm} is not a non-negative number")
        return cls(round_number, attempt, participants, clip_norm)


def threshold_for(spec: SecureAggregationSpec, holders: int) -> int:
    """Shares that rebuild a secret: ``floor(fraction x holders) + 1``, always a strict majority."""
    return min(holders, math.floor(spec.threshold_fraction * holders) + 1)


def neighbours_for(spec: SecureAggregationSpec, participants: int) -> int | None:
    """The SecAgg+ degree for a round of ``participants``; None (every pair) when k >= n - 1."""
    k = spec.neighbours
    return None if k is None or k >= participants - 1 else k


def session_config(
    spec: SecureAggregationSpec,
    participants: Sequence[str],
    round_number: int,
    attempt: int,
    vector_length: int,
    federation_id: str,
) -> SecAggConfig:
    """The protocol parameters of one session, as every party derives them."""
    if len(participants) < spec.min_clients:
        raise SecAggError(
            f"secure aggregation needs at least secure_aggregation.min_clients="
            f"{spec.min_clients} participants, the round has {len(participants)}"
        )
    k = neighbours_for(spec, len(participants))
    holders = len(participants) if k is None else k + 1
    return SecAggConfig(
        clients=tuple(participants),
        threshold=threshold_for(spec, holders),
        vector_length=vector_length,
        session_id=session_id_for(federation_id, round_number, attempt),
        round_number=round_number,
        modulus_bits=spec.modulus_bits,
        neighbours=k,
    )


def quantizer_for(
    spec: SecureAggregationSpec, participants: int, clip: float
) -> FixedPointQuantizer:
    """The fixed-point quantizer of a session: ``spec.bits``, or the most the ring holds.

    The sum of ``n`` values of ``b`` bits stays below ``2^k`` (and exact in float64) when
    ``b <= min(k, 53) - ceil(log2 n)``; a plan's explicit ``bits`` beyond that is refused.
    """
    limit = min(spec.modulus_bits, _FLOAT64_EXACT_BITS)
    bits = spec.bits or limit - max(1, math.ceil(math.log2(max(participants, 2))))
    quantizer = FixedPointQuantizer(clip, bits, spec.modulus_bits)
    quantizer.check_capacity(participants)
    return quantizer
