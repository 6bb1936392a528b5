"""The client side of secure aggregation (Bonawitz et al. 2017, Figure 4), as a state machine.

Each method is one round and must be called in order; anything unexpected, from a bad
signature to a request that would reveal both secrets of a client, aborts the client
for this round (``SecAggAborted``) and it answers nothing more.

The invariant the client enforces: in Unmasking it reveals, for each client u, either
the share of u's self-mask seed b_u (u is in the survivor set U3 it signed) or the share
of u's pairwise secret key s_u (u shared keys but is not in U3), never both, answers only
once, never reveals its own key share (it knows it sent masked input), and reveals
nothing unless t of u's share holders signed the same U3 (``consistency``). With
``2t > holders``, no lie about dropouts lets the server collect t shares of both secrets
of any client, nor one client's self-mask seed next to the keys of all its mask peers.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from bastion.privacy.errors import KeySubstitutionDetected, SecAggAborted, SecAggError
from bastion.privacy.secagg import consistency, keys
from bastion.privacy.secagg.config import SecAggConfig
from bastion.privacy.secagg.masking import add_pairwise, pairwise_mask, scratch, self_mask
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
from bastion.privacy.secagg.prg import SEED_BYTES
from bastion.privacy.secagg.shamir import SHARE_BYTES, Share, split
from bastion.privacy.secagg.stats import ProtocolStats, Stage
from bastion.privacy.secagg.wire import Reader, join_fields

T = TypeVar("T")


class ClientState(enum.Enum):
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"
    DONE = "done"
    ABORTED = "aborted"


class SecAggClient:
    """One collaborator's part in one round of secure aggregation."""

    def __init__(
        self,
        name: str,
        config: SecAggConfig,
        identity_key: keys.IdentityPrivateKey,
        identity_verifier: keys.IdentityVerifier,
        credential: bytes = b"",
    ) -> None:
        if name not in config.clients:
            raise SecAggError(f"{name!r} is not on this round's secure aggregation roster")
        self.name = name
        self.config = config
        self.stats = ProtocolStats()
        self._identity_key = identity_key
        self._credential = credential
        self._verifier = identity_verifier
        self._state = ClientState.ADVERTISE_KEYS
        self._keys = keys.RoundKeys.generate()
        self._roster: dict[str, AdvertiseKeys] = {}
        self._identities: dict[str, keys.IdentityPublicKey] = {}  # verified at advertisement
        self._survivors: frozenset[str] = frozenset()  # the U3 we signed
        self._own_shares: tuple[Share, Share] | None = None  # (key share, self-mask share)
        self._held: dict[str, tuple[Share, Share]] = {}  # owner -> (key share, self-mask share)
        self._self_mask_seed = b""

    @property
    def state(self) -> ClientState:
        return self._state

    def _run(self, expected: ClientState, stage: Stage, step: Callable[[], T]) -> T:
        if self._state is ClientState.ABORTED:
            raise SecAggAborted(f"client {self.name!r} already aborted this round")
        if self._state is not expected:
            self._abort()
            raise SecAggAborted(
                f"client {self.name!r} got a {stage.value} message while in state "
                f"{self._state.value}: out-of-order messages abort the round"
            )
        try:
            with self.stats.timed(stage):
                return step()
        except Exception:
            self._abort()
            raise

    def _abort(self) -> None:
        self._state = ClientState.ABORTED
        self._held.clear()
        self._own_shares = None
        self._self_mask_seed = b""

    # ------------------------------------------------------------------ round 0

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0: publish the round's two public keys, signed with the identity key."""
        return self._run(ClientState.ADVERTISE_KEYS, Stage.ADVERTISE_KEYS, self._advertise)

    def _advertise(self) -> AdvertiseKeys:
        c_public, s_public = self._keys.c_public, self._keys.s_public
        payload = keys.advertisement_payload(
            self.config.session_id, self.config.round_number, self.name, c_public, s_public
        )
        message = AdvertiseKeys(
            self.name, c_public, s_public, keys.sign(self._identity_key, payload), self._credential
        )
        self.stats.sent(Stage.ADVERTISE_KEYS, len(message.to_bytes()))
        self._state = ClientState.SHARE_KEYS
        return message

    # ------------------------------------------------------------------ round 1

    def share_keys(self, roster: KeyRoster) -> EncryptedShares:
        """Round 1: check every peer's signed keys, then send each holder its encrypted shares."""
        return self._run(ClientState.SHARE_KEYS, Stage.SHARE_KEYS, lambda: self._share(roster))

    def _share(self, roster: KeyRoster) -> EncryptedShares:
        self.stats.received(Stage.ADVERTISE_KEYS, len(roster.to_bytes()))
        self._roster = self._verified_roster(roster)
        holders = sorted(self.config.holders_of(self.name) & self._roster.keys())
        if len(holders) < self.config.threshold:
            raise SecAggAborted(
                f"only {len(holders)} of {self.name!r}'s share holders advertised keys, fewer "
                f"than the threshold {self.config.threshold}"
            )
        self._self_mask_seed = secrets.token_bytes(SEED_BYTES)
        points = [self.config.share_point(holder) for holder in holders]
        key_shares = split(self._keys.s_private_bytes(), self.config.threshold, points)
        mask_shares = split(self._self_mask_seed, self.config.threshold, points)
        ciphertexts: dict[str, bytes] = {}
        for holder, key_share, mask_share in zip(holders, key_shares, mask_shares, strict=True):
            if holder == self.name:
                self._own_shares = (key_share, mask_share)
                continue
            plaintext = join_fields(
                self.name.encode(), holder.encode(), key_share.to_bytes(), mask_share.to_bytes()
            )
            aead_key = self._share_key(holder)
            ciphertexts[holder] = keys.encrypt_for(
                aead_key,
                plaintext,
                self.config.session_id,
                self.config.round_number,
                self.name,
                holder,
            )
        message = EncryptedShares(self.name, ciphertexts)
        self.stats.sent(Stage.SHARE_KEYS, len(message.to_bytes()))
        self._state = ClientState.MASKED_INPUT
        return message

    def _verified_roster(self, roster: KeyRoster) -> dict[str, AdvertiseKeys]:
        entries: dict[str, AdvertiseKeys] = {}
        seen_keys: set[bytes] = set()
        for entry in roster.keys:
            if entry.client not in self.config.clients:
                raise SecAggAborted(
                    f"the key roster names {entry.client!r}, who is not on the roster"
                )
            if entry.client in entries:
                raise SecAggAborted(f"the key roster lists {entry.client!r} twice")
            if (
                len(entry.c_public) != keys.PUBLIC_KEY_BYTES
                or len(entry.s_public) != keys.PUBLIC_KEY_BYTES
            ):
                raise SecAggAborted(f"{entry.client!r} advertised keys of the wrong length")
            self._check_signature(entry)
            if (
                entry.c_public in seen_keys
                or entry.s_public in seen_keys
                or entry.c_public == entry.s_public
            ):
                raise SecAggAborted(f"{entry.client!r} advertised a public key that is not unique")
            seen_keys.update((entry.c_public, entry.s_public))
            entries[entry.client] = entry
        own = entries.get(self.name)
        if own is None or (own.c_public, own.s_public) != (
            self._keys.c_public,
            self._keys.s_public,
        ):
            raise KeySubstitutionDetected(
                f"the key roster does not carry {self.name!r}'s own keys unchanged: "
                "the server substituted them"
            )
        return entries

    def _check_signature(self, entry: AdvertiseKeys) -> None:
        try:
            identity = self._verifier(entry.client, entry.credential)
        except Exception as exc:  # the verifier is the caller's code; any failure is a refusal
            raise KeySubstitutionDetected(
                f"the credential advertised for {entry.client!r} does not prove its identity "
                f"({exc}): the server or a third party substituted its keys; aborting the round"
            ) from None
        payload = keys.advertisement_payload(
            self.config.session_id,
            self.config.round_number,
            entry.client,
            entry.c_public,
            entry.s_public,
        )
        if not keys.verify(identity, entry.signature, payload):
            raise KeySubstitutionDetected(
                f"the keys advertised for {entry.client!r} are not signed by its identity key: "
                "the server or a third party substituted them; aborting the round"
            )
        self._identities[entry.client] = identity

    def _share_key(self, peer: str) -> bytes:
        return keys.share_key(
            self._keys.c_private,
            self._roster[peer].c_public,
            self.config.session_id,
            self.config.round_number,
            self.name,
            peer,
        )

    # ------------------------------------------------------------------ round 2

    def masked_input(self, shares: SharesForClient, vector: np.ndarray) -> MaskedInput:
        """Round 2: keep the shares addressed to us, then send our input under all masks."""
        return self._run(
            ClientState.MASKED_INPUT, Stage.MASKED_INPUT, lambda: self._mask(shares, vector)
        )

    def _mask(self, shares: SharesForClient, vector: np.ndarray) -> MaskedInput:
        self.stats.received(Stage.SHARE_KEYS, len(shares.to_bytes()))
        if shares.recipient != self.name:
            raise SecAggAborted(f"{self.name!r} was handed shares meant for {shares.recipient!r}")
        words = np.asarray(vector)
        if words.dtype != self.config.dtype or words.shape != (self.config.vector_length,):
            raise SecAggError(
                f"secure aggregation input must be a {self.config.dtype} vector of length "
                f"{self.config.vector_length}, got {words.dtype} of shape {words.shape} "
                "(quantize it with FixedPointQuantizer first)"
            )
        neighbours = self.config.neighbours_of(self.name) & self._roster.keys()
        for sender, ciphertext in shares.ciphertexts.items():
            if sender not in neighbours:
                raise SecAggAborted(
                    f"{self.name!r} got shares from {sender!r}, not one of its peers"
                )
            self._held[sender] = self._open_shares(sender, ciphertext)
        assert self._own_shares is not None
        self._held[self.name] = self._own_shares
        if len(self._held) < self.config.threshold:
            raise SecAggAborted(
                f"only {len(self._held)} clients in {self.name!r}'s neighbourhood shared keys, "
                f"fewer than the threshold {self.config.threshold}"
            )
        masked = words.astype(self.config.dtype, copy=True)
        buffer = scratch(self.config)
        masked += self_mask(self.config, self._self_mask_seed, buffer)
        for peer in sorted(shares.ciphertexts):
            seed = keys.pairwise_seed(
                self._keys.s_private,
                self._roster[peer].s_public,
                self.config.session_id,
                self.config.round_number,
                self.name,
                peer,
            )
            add_pairwise(masked, pairwise_mask(self.config, seed, buffer), self.name, peer)
        self._self_mask_seed = b""
        message = MaskedInput(self.name, masked)
        self.stats.sent(Stage.MASKED_INPUT, message.encoded_size())
        self._state = ClientState.CONSISTENCY_CHECK
        return message

    def _open_shares(self, sender: str, ciphertext: bytes) -> tuple[Share, Share]:
        plaintext = keys.decrypt_from(
            self._share_key(sender),
            ciphertext,
            self.config.session_id,
            self.config.round_number,
            sender,
            self.name,
        )
        reader = Reader(plaintext, f"shares from {sender!r}")
        owner, recipient = reader.text(), reader.text()
        key_share = Share.from_bytes(reader.blob(SHARE_BYTES))
        mask_share = Share.from_bytes(reader.blob(SHARE_BYTES))
        reader.finish()
        point = self.config.share_point(self.name)
        if (owner, recipient) != (sender, self.name) or {key_share.x, mask_share.x} != {point}:
            raise SecAggAborted(f"shares from {sender!r} are addressed to someone else")
        return key_share, mask_share

    # ------------------------------------------------------------------ round 3

    def consistency_check(self, survivors: SurvivorList) -> ConsistencySignature:
        """Round 3: check the announced survivor set U3, then sign it with the identity key."""
        return self._run(
            ClientState.CONSISTENCY_CHECK,
            Stage.CONSISTENCY_CHECK,
            lambda: self._sign_survivors(survivors),
        )

    def _sign_survivors(self, message: SurvivorList) -> ConsistencySignature:
        self.stats.received(Stage.CONSISTENCY_CHECK, len(message.to_bytes()))
        self._survivors = consistency.check_survivors(
            self.config, self.name, self._roster.keys(), self._held.keys(), message.survivors
        )
        payload = keys.consistency_payload(
            self.config.session_id, self.config.round_number, self.name, self._survivors
        )
        signed = ConsistencySignature(self.name, keys.sign(self._identity_key, payload))
        self.stats.sent(Stage.CONSISTENCY_CHECK, len(signed.to_bytes()))
        self._state = ClientState.UNMASKING
        return signed

    # ------------------------------------------------------------------ round 4

    def unmask(self, request: UnmaskingRequest) -> UnmaskingResponse:
        """Round 4: once t holders signed our U3, reveal one share per client we hold shares
        of: self-mask for those in U3, pairwise key for those who shared keys but are not."""
        return self._run(ClientState.UNMASKING, Stage.UNMASKING, lambda: self._unmask(request))

    def _unmask(self, request: UnmaskingRequest) -> UnmaskingResponse:
        self.stats.received(Stage.UNMASKING, len(request.to_bytes()))
        survivors = self._survivors
        if len(request.survivors) != len(survivors) or set(request.survivors) != survivors:
            raise SecAggAborted(
                "the unmasking request names another survivor set than the one we signed: "
                "refusing to reveal any share"
            )
        signers = consistency.verified_signers(
            self.config, survivors, request.signatures, self._identities
        )
        mask_owners = self._held.keys() & survivors
        key_owners = self._held.keys() - survivors
        consistency.check_signers(self.config, signers, mask_owners | key_owners)
        if mask_owners & key_owners or self.name in key_owners:
            raise SecAggAborted("refusing to reveal both secrets of a client, or our own key")
        mask_shares = {o: self._held[o][1].to_bytes() for o in sorted(mask_owners)}
        key_shares = {o: self._held[o][0].to_bytes() for o in sorted(key_owners)}
        response = UnmaskingResponse(self.name, mask_shares, key_shares)
        self.stats.sent(Stage.UNMASKING, len(response.to_bytes()))
        self._held.clear()
        self._own_shares = None
        self._state = ClientState.DONE
        return response
