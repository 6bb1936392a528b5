"""The server side of secure aggregation (Bonawitz et al. 2017, Figure 4), as a state machine.

The server relays keys and encrypted shares, sums masked inputs as they arrive (memory
O(vector), not O(clients x vector)), announces who sent one (U3) and relays the clients'
signatures over that set (ConsistencyCheck), and in Unmasking collects the self-mask
shares of those in U3 and the key shares of those who dropped after sharing. It checks
that the round can finish *before* it reconstructs anything: when too many clients
dropped it aborts with ``SecAggAborted`` and has unmasked nothing.

``receive_*`` methods take the sender's authenticated name (from its mTLS certificate)
and refuse a message that claims another. A malformed message from one client raises
``ProtocolError`` and is ignored; the round goes on without it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from bastion.errors import ProtocolError
from bastion.privacy.errors import SecAggAborted
from bastion.privacy.secagg import keys
from bastion.privacy.secagg.config import SecAggConfig
from bastion.privacy.secagg.consistency import is_valid, signers_needed_by
from bastion.privacy.secagg.masking import pairwise_mask, remove_pairwise, scratch, self_mask
from bastion.privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    SharesForClient,
    SurvivorList,
    UnmaskingRequest,
    UnmaskingResponse,
)
from bastion.privacy.secagg.shamir import ShamirError, Share, combine
from bastion.privacy.secagg.stats import ProtocolStats, Stage

T = TypeVar("T")
_MAX_CIPHERTEXT_BYTES = 4096


class ServerState(enum.Enum):
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class HeldSecrets:
    """What the server holds about one client's two secrets, for auditing the invariant."""

    self_mask_shares: int
    key_shares: int
    self_mask_recovered: bool
    key_recovered: bool


@dataclass(frozen=True)
class SecAggResult:
    """The ring sum of the survivors' inputs, and who they are."""

    total: np.ndarray
    contributors: tuple[str, ...]


class SecAggServer:
    """The aggregator's part in one round of secure aggregation."""

    def __init__(
        self, config: SecAggConfig, identity_verifier: keys.IdentityVerifier | None = None
    ) -> None:
        self.config = config
        self.stats = ProtocolStats()
        self._verifier = identity_verifier
        self._state = ServerState.ADVERTISE_KEYS
        self._abort_reason = ""
        self._advertised: dict[str, AdvertiseKeys] = {}
        self._identities: dict[str, keys.IdentityPublicKey] = {}
        self._shares: dict[str, EncryptedShares] = {}
        self._masked_senders: list[str] = []
        self._total = np.zeros(config.vector_length, dtype=config.dtype)
        self._survivors: frozenset[str] = frozenset()
        self._dropped: frozenset[str] = frozenset()
        self._signatures: dict[str, bytes] = {}
        self._signers: frozenset[str] = frozenset()
        self._responders: set[str] = set()
        self._mask_shares: dict[str, dict[str, Share]] = {name: {} for name in config.clients}
        self._key_shares: dict[str, dict[str, Share]] = {name: {} for name in config.clients}
        self._recovered_masks: set[str] = set()
        self._recovered_keys: set[str] = set()

    @property
    def state(self) -> ServerState:
        return self._state

    def held_secrets(self) -> dict[str, HeldSecrets]:
        """Per client, how many shares of each secret the server holds and what it rebuilt."""
        return {
            name: HeldSecrets(
                self_mask_shares=len(self._mask_shares[name]),
                key_shares=len(self._key_shares[name]),
                self_mask_recovered=name in self._recovered_masks,
                key_recovered=name in self._recovered_keys,
            )
            for name in self.config.clients
        }

    def abort(self, reason: str) -> SecAggAborted:
        """Give up on the round: drop all share material and refuse every later call."""
        self._state = ServerState.ABORTED
        self._abort_reason = reason
        self._mask_shares = {name: {} for name in self.config.clients}
        self._key_shares = {name: {} for name in self.config.clients}
        return SecAggAborted(f"secure aggregation round {self.config.round_number}: {reason}")

    def _run(self, expected: ServerState, stage: Stage, step: Callable[[], T]) -> T:
        if self._state is ServerState.ABORTED:
            raise SecAggAborted(f"the round was aborted: {self._abort_reason}")
        if self._state is not expected:
            raise ProtocolError(
                f"secure aggregation server is in {self._state.value}, not {expected.value}"
            )
        with self.stats.timed(stage):
            return step()

    def _need_at_least(self, group: set[str] | frozenset[str], what: str) -> None:
        if len(group) < self.config.threshold:
            raise self.abort(
                f"only {len(group)} clients {what}, fewer than the threshold "
                f"{self.config.threshold} (at most {self.config.max_dropouts} may drop)"
            )

    @staticmethod
    def _check_sender(sender: str, claimed: str, allowed: set[str] | frozenset[str]) -> None:
        if claimed != sender:
            raise ProtocolError(f"{sender!r} sent a message in the name of {claimed!r}")
        if sender not in allowed:
            raise ProtocolError(f"{sender!r} may not send this secure aggregation message now")

    # ------------------------------------------------------------------ round 0

    def receive_advertise(self, sender: str, message: AdvertiseKeys) -> None:
        self._run(
            ServerState.ADVERTISE_KEYS,
            Stage.ADVERTISE_KEYS,
            lambda: self._advertise(sender, message),
        )

    def _advertise(self, sender: str, message: AdvertiseKeys) -> None:
        self._check_sender(
            sender, message.client, set(self.config.clients) - self._advertised.keys()
        )
        if self._verifier is not None:
            payload = keys.advertisement_payload(
                self.config.session_id,
                self.config.round_number,
                sender,
                message.c_public,
                message.s_public,
            )
            try:
                identity = self._verifier(sender, message.credential)
            except Exception as exc:  # the caller's lookup; any failure refuses the message
                raise ProtocolError(f"no identity key for {sender!r}: {exc}") from None
            if not keys.verify(identity, message.signature, payload):
                raise ProtocolError(f"{sender!r} advertised keys with an invalid signature")
            self._identities[sender] = identity
        self.stats.received(Stage.ADVERTISE_KEYS, len(message.to_bytes()))
        self._advertised[sender] = message

    def close_advertise(self) -> KeyRoster:
        """End round 0: the roster of advertised keys to broadcast to every advertiser (U1)."""
        return self._run(ServerState.ADVERTISE_KEYS, Stage.ADVERTISE_KEYS, self._close_advertise)

    def _close_advertise(self) -> KeyRoster:
        self._need_at_least(set(self._advertised), "advertised keys")
        roster = KeyRoster(tuple(self._advertised[name] for name in sorted(self._advertised)))
        self.stats.sent(Stage.ADVERTISE_KEYS, len(roster.to_bytes()) * len(self._advertised))
        self._state = ServerState.SHARE_KEYS
        return roster

    # ------------------------------------------------------------------ round 1

    def receive_shares(self, sender: str, message: EncryptedShares) -> None:
        self._run(
            ServerState.SHARE_KEYS, Stage.SHARE_KEYS, lambda: self._receive_shares(sender, message)
        )

    def _receive_shares(self, sender: str, message: EncryptedShares) -> None:
        self._check_sender(sender, message.sender, set(self._advertised) - self._shares.keys())
        expected = self.config.neighbours_of(sender) & self._advertised.keys()
        if set(message.ciphertexts) != expected:
            raise ProtocolError(f"{sender!r} did not address shares to exactly its peers")
        if any(len(c) > _MAX_CIPHERTEXT_BYTES for c in message.ciphertexts.values()):
            raise ProtocolError(f"{sender!r} sent an oversized share ciphertext")
        self.stats.received(Stage.SHARE_KEYS, len(message.to_bytes()))
        self._shares[sender] = message

    def close_shares(self) -> dict[str, SharesForClient]:
        """End round 1: for each client that shared (U2), the ciphertexts addressed to it."""
        return self._run(ServerState.SHARE_KEYS, Stage.SHARE_KEYS, self._close_shares)

    def _close_shares(self) -> dict[str, SharesForClient]:
        sharers = set(self._shares)
        # A client needs t share holders that shared too; drop those without (SecAgg+ only).
        while True:
            short = {
                u
                for u in sharers
                if len(self.config.holders_of(u) & sharers) < self.config.threshold
            }
            if not short:
                break
            sharers -= short
        self._need_at_least(sharers, "shared their keys")
        self._shares = {name: self._shares[name] for name in sorted(sharers)}
        outgoing = {
            recipient: SharesForClient(
                recipient,
                {
                    s: m.ciphertexts[recipient]
                    for s, m in self._shares.items()
                    if recipient in m.ciphertexts
                },
            )
            for recipient in self._shares
        }
        self.stats.sent(Stage.SHARE_KEYS, sum(len(m.to_bytes()) for m in outgoing.values()))
        self._state = ServerState.MASKED_INPUT
        return outgoing

    # ------------------------------------------------------------------ round 2

    def receive_masked_input(self, sender: str, message: MaskedInput) -> None:
        self._run(
            ServerState.MASKED_INPUT,
            Stage.MASKED_INPUT,
            lambda: self._receive_masked(sender, message),
        )

    def _receive_masked(self, sender: str, message: MaskedInput) -> None:
        self._check_sender(sender, message.client, set(self._shares) - set(self._masked_senders))
        vector = message.vector
        if vector.dtype != self.config.dtype or vector.shape != (self.config.vector_length,):
            raise ProtocolError(
                f"{sender!r} sent a masked input of {vector.dtype} {vector.shape}, expected "
                f"{self.config.dtype} ({self.config.vector_length},)"
            )
        self.stats.received(Stage.MASKED_INPUT, message.encoded_size())
        self._total += vector
        self._masked_senders.append(sender)

    def close_masked_inputs(self) -> SurvivorList:
        """End round 2: the survivor set U3 to send every client that sent masked input."""
        return self._run(ServerState.MASKED_INPUT, Stage.MASKED_INPUT, self._close_masked)

    def _close_masked(self) -> SurvivorList:
        self._survivors = frozenset(self._masked_senders)
        self._dropped = frozenset(self._shares) - self._survivors
        self._need_at_least(self._survivors, "sent masked input")
        self._check_recoverable(self._survivors, "sent masked input")
        announcement = SurvivorList(tuple(sorted(self._survivors)))
        sent = len(announcement.to_bytes()) * len(self._survivors)
        self.stats.sent(Stage.CONSISTENCY_CHECK, sent)
        self._state = ServerState.CONSISTENCY_CHECK
        return announcement

    def _check_recoverable(self, answering: frozenset[str] | set[str], what: str) -> None:
        """Abort unless each secret we must rebuild has at least t holders among ``answering``."""
        short = [
            owner
            for owner in sorted(self._survivors | self._needed_keys())
            if len(self.config.holders_of(owner) & answering) < self.config.threshold
        ]
        if short:
            raise self.abort(
                f"clients {short[:5]} have fewer than {self.config.threshold} share holders "
                f"that {what}: too many dropouts to unmask the sum"
            )

    def _needed_keys(self) -> frozenset[str]:
        """Dropped clients whose pairwise masks are inside some survivor's input."""
        return frozenset(u for u in self._dropped if self.config.neighbours_of(u) & self._survivors)

    # ------------------------------------------------------------------ round 3

    def receive_signature(self, sender: str, message: ConsistencySignature) -> None:
        self._run(
            ServerState.CONSISTENCY_CHECK,
            Stage.CONSISTENCY_CHECK,
            lambda: self._receive_signature(sender, message),
        )

    def _receive_signature(self, sender: str, message: ConsistencySignature) -> None:
        self._check_sender(sender, message.client, self._survivors - self._signatures.keys())
        identity = self._identities.get(sender)  # refuse a bad signature before peers see it
        if identity is not None and not is_valid(
            self.config, self._survivors, sender, message.signature, identity
        ):
            raise ProtocolError(f"{sender!r} did not sign the survivor set it was sent")
        self.stats.received(Stage.CONSISTENCY_CHECK, len(message.to_bytes()))
        self._signatures[sender] = message.signature

    def close_consistency(self) -> dict[str, UnmaskingRequest]:
        """End round 3: for each client that signed U3, U3 and the signatures it must check."""
        return self._run(
            ServerState.CONSISTENCY_CHECK, Stage.CONSISTENCY_CHECK, self._close_consistency
        )

    def _close_consistency(self) -> dict[str, UnmaskingRequest]:
        signers = frozenset(self._signatures)
        self._need_at_least(signers, "signed the survivor set")
        self._check_recoverable(signers, "signed the survivor set")
        self._signers = signers
        survivors = tuple(sorted(self._survivors))
        # Clients that check the same signers share one request (all of them, on the complete graph).
        distinct: dict[frozenset[str], UnmaskingRequest] = {}
        requests: dict[str, UnmaskingRequest] = {}
        for name in sorted(signers):
            needed = signers & signers_needed_by(self.config, name)
            if needed not in distinct:
                chosen = {s: self._signatures[s] for s in sorted(needed)}
                distinct[needed] = UnmaskingRequest(survivors, chosen)
            requests[name] = distinct[needed]
        sizes = {id(r): len(r.to_bytes()) for r in distinct.values()}
        self.stats.sent(Stage.UNMASKING, sum(sizes[id(r)] for r in requests.values()))
        self._state = ServerState.UNMASKING
        return requests

    # ------------------------------------------------------------------ round 4

    def receive_unmasking(self, sender: str, message: UnmaskingResponse) -> None:
        self._run(
            ServerState.UNMASKING, Stage.UNMASKING, lambda: self._receive_unmasking(sender, message)
        )

    def _receive_unmasking(self, sender: str, message: UnmaskingResponse) -> None:
        self._check_sender(sender, message.client, self._signers - self._responders)
        holds_for = self.config.holders_of(sender)
        if not set(message.self_mask_shares) <= self._survivors & holds_for:
            raise ProtocolError(f"{sender!r} sent self-mask shares of clients that did not survive")
        if not set(message.key_shares) <= self._dropped & holds_for:
            raise ProtocolError(f"{sender!r} sent key shares of clients that did not drop")
        point = self.config.share_point(sender)
        try:
            mask_shares = {o: Share.from_bytes(b) for o, b in message.self_mask_shares.items()}
            key_shares = {o: Share.from_bytes(b) for o, b in message.key_shares.items()}
        except ShamirError as exc:
            raise ProtocolError(f"{sender!r} sent a malformed share: {exc}") from None
        if any(s.x != point for s in [*mask_shares.values(), *key_shares.values()]):
            raise ProtocolError(f"{sender!r} sent shares that are not its own")
        self._assert_invariant(mask_shares.keys(), key_shares.keys())
        self.stats.received(Stage.UNMASKING, len(message.to_bytes()))
        self._responders.add(sender)
        for owner, share in mask_shares.items():
            self._mask_shares[owner][sender] = share
        for owner, share in key_shares.items():
            self._key_shares[owner][sender] = share

    def _assert_invariant(self, new_masks: Iterable[str], new_keys: Iterable[str]) -> None:
        """Refuse, before storing them, shares that would give t of both secrets of a client.

        Only survivors' self-mask shares and dropped clients' key shares are accepted, and
        the two sets are disjoint, so this never fires on an honest server; it is the
        invariant stated in code, checked on every response.
        """
        t = self.config.threshold
        masks, keys_ = set(new_masks), set(new_keys)
        for name in masks | keys_:
            mask_count = len(self._mask_shares[name]) + (name in masks)
            key_count = len(self._key_shares[name]) + (name in keys_)
            if mask_count >= t and key_count >= t:
                raise self.abort(f"refusing to hold both secrets of {name!r}")

    def finalize(self) -> SecAggResult:
        """End round 4: unmask the survivors' sum, or abort having unmasked nothing."""
        return self._run(ServerState.UNMASKING, Stage.UNMASKING, self._finalize)

    def _finalize(self) -> SecAggResult:
        t = self.config.threshold
        short = [o for o in sorted(self._survivors) if len(self._mask_shares[o]) < t]
        short += [o for o in sorted(self._needed_keys()) if len(self._key_shares[o]) < t]
        if short:
            raise self.abort(
                f"{len(self._responders)} clients answered the unmasking request; "
                f"clients {short[:5]} lack {t} shares, so nothing was unmasked"
            )
        total = self._total.copy()
        buffer = scratch(self.config)
        try:
            for owner in sorted(self._survivors):
                seed = combine(list(self._mask_shares[owner].values()), t)
                self._recovered_masks.add(owner)
                total -= self_mask(self.config, seed, buffer)
            for owner in sorted(self._needed_keys()):
                self._remove_dropped_masks(total, owner, buffer)
        except ShamirError as exc:
            raise self.abort(f"shares do not reconstruct: {exc}") from None
        self._state = ServerState.DONE
        return SecAggResult(total, tuple(sorted(self._survivors)))

    def _remove_dropped_masks(self, total: np.ndarray, owner: str, buffer: np.ndarray) -> None:
        raw = combine(list(self._key_shares[owner].values()), self.config.threshold)
        private = keys.load_private(raw)
        if keys.public_bytes(private) != self._advertised[owner].s_public:
            raise self.abort(f"the key shares of {owner!r} rebuild a key it never advertised")
        self._recovered_keys.add(owner)
        for peer in sorted(self.config.neighbours_of(owner) & self._survivors):
            seed = keys.pairwise_seed(
                private,
                self._advertised[peer].s_public,
                self.config.session_id,
                self.config.round_number,
                owner,
                peer,
            )
            remove_pairwise(total, pairwise_mask(self.config, seed, buffer), peer, owner)
