"""Public parameters of one secure aggregation round, and the SecAgg+ neighbour graph.

Every client builds the same ``SecAggConfig`` from the plan and the round, and validates
it itself: the threshold is the one knob a curious server would like to lower, so a
threshold that would let a lying server unmask a client (``2t <= holders``) is refused
on both sides.

SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead"): instead of every pair of clients, each client masks with and shares its
secrets among ``k`` neighbours in a random Harary graph (a ring under a random
permutation, joined to ``k/2`` positions on each side). ``k = O(log n)`` keeps the
cost polylogarithmic; the permutation comes from a ChaCha20 stream keyed by the
session id, so all parties derive the same graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from bastion.privacy.errors import SecAggError
from bastion.privacy.secagg.prg import MaskPurpose, expand_mask
from bastion.privacy.secagg.quantize import ring_dtype
from bastion.privacy.secagg.shamir import MAX_SHARES
from bastion.privacy.secagg.wire import join_fields

MIN_SESSION_ID_BYTES = 16
MAX_SESSION_ID_BYTES = 64
MAX_VECTOR_LENGTH = 1 << 34


def session_id_for(federation_id: str, round_number: int, attempt: int = 0) -> bytes:
    """A session id every party can compute, so the server cannot grind graphs by choosing it.

    ``attempt`` separates the sessions of a round that was restarted; clients accept only
    increasing attempts, so the server cannot replay an old session's signed keys.
    """
    if round_number < 0 or attempt < 0:
        raise SecAggError("round number and attempt must be non-negative")
    fields = join_fields(
        b"bastion-secagg/v1/session",
        federation_id.encode(),
        str(round_number).encode(),
        str(attempt).encode(),
    )
    return hashlib.sha256(fields).digest()


@dataclass(frozen=True)
class SecAggConfig:
    """What every party of one round agrees on before it starts.

    ``clients`` is the round's roster; ``neighbours=None`` is Bonawitz's complete graph,
    an even ``neighbours=k`` selects SecAgg+. ``threshold`` counts shares among a client's
    holders (itself and its neighbours) and must exceed half of them.
    """

    clients: tuple[str, ...]
    threshold: int
    vector_length: int
    session_id: bytes
    round_number: int
    modulus_bits: int = 32
    neighbours: int | None = None
    _graph: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(sorted(self.clients))
        if len(set(names)) != len(names) or any(not n for n in names):
            raise SecAggError("secure aggregation client names must be unique and non-empty")
        if not 2 <= len(names) <= MAX_SHARES:
            raise SecAggError(
                f"secure aggregation needs 2 to {MAX_SHARES} clients, got {len(names)}"
            )
        object.__setattr__(self, "clients", names)
        if not MIN_SESSION_ID_BYTES <= len(self.session_id) <= MAX_SESSION_ID_BYTES:
            raise SecAggError(
                f"session_id must be {MIN_SESSION_ID_BYTES} to {MAX_SESSION_ID_BYTES} bytes "
                f"(see session_id_for), got {len(self.session_id)}"
            )
        if self.round_number < 0:
            raise SecAggError(f"round_number must be non-negative, got {self.round_number}")
        if not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            raise SecAggError(f"vector_length must be 1 to {MAX_VECTOR_LENGTH}")
        ring_dtype(self.modulus_bits)
        self._check_graph()
        self._check_threshold()
        object.__setattr__(self, "_graph", self._build_graph())

    def _check_graph(self) -> None:
        k = self.neighbours
        if k is None:
            return
        n = len(self.clients)
        if k < 2 or k % 2 or k >= n - 1:
            raise SecAggError(
                f"SecAgg+ neighbours={k} must be even, at least 2 and below {n - 1} for "
                f"{n} clients (use neighbours=None for the complete graph)"
            )

    def _check_threshold(self) -> None:
        holders = self.holder_count
        if not holders < 2 * self.threshold <= 2 * holders:
            raise SecAggError(
                f"threshold {self.threshold} must be more than half of the {holders} share "
                f"holders and at most {holders} (that is {holders // 2 + 1} to {holders}): "
                "with half or fewer, a server lying about dropouts could learn both secrets "
                "of a client and unmask its input"
            )

    @property
    def holder_count(self) -> int:
        """How many clients hold shares of each client's secrets (itself included)."""
        return len(self.clients) if self.neighbours is None else self.neighbours + 1

    @property
    def max_dropouts(self) -> int:
        """Dropouts among any client's holders that the round survives."""
        return self.holder_count - self.threshold

    @property
    def dtype(self) -> np.dtype:
        return ring_dtype(self.modulus_bits)

    def share_point(self, client: str) -> int:
        """The Shamir evaluation point of ``client``'s shares (its 1-based roster position)."""
        return self.clients.index(client) + 1

    def neighbours_of(self, client: str) -> frozenset[str]:
        """The clients ``client`` masks with (everyone else on the complete graph)."""
        try:
            return self._graph[client]
        except KeyError:
            raise SecAggError(f"{client!r} is not on this round's roster") from None

    def holders_of(self, client: str) -> frozenset[str]:
        """The clients that receive shares of ``client``'s secrets: its neighbours and itself."""
        return self.neighbours_of(client) | {client}

    def _build_graph(self) -> dict[str, frozenset[str]]:
        everyone = frozenset(self.clients)
        if self.neighbours is None:
            return {name: everyone - {name} for name in self.clients}
        seed = hashlib.sha256(b"bastion-secagg/v1/graph|" + self.session_id).digest()
        keys = expand_mask(
            seed,
            len(self.clients),
            np.dtype(np.uint64),
            MaskPurpose.GRAPH,
            self.session_id,
            self.round_number,
        )
        ring = [name for _, name in sorted(zip(keys.tolist(), self.clients, strict=True))]
        n, half = len(ring), self.neighbours // 2
        graph: dict[str, frozenset[str]] = {}
        for position, name in enumerate(ring):
            graph[name] = frozenset(
                ring[(position + step) % n] for step in range(-half, half + 1) if step
            )
        return graph
