"""Bind a quote to one TLS key and one fresh nonce, so it cannot be relayed or replayed.

Report data layout (64 bytes, the SGX REPORTDATA field)::

    bytes  0..31  SHA-256( DER SubjectPublicKeyInfo of the TLS key  ||  32-byte nonce )
    bytes 32..63  zero

The SPKI DER is self-delimiting and the nonce has a fixed length, so the concatenation is
unambiguous.  The zero padding keeps the upper half free for a future version tag.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from bastion.tee.attestation.errors import (
    BindingError,
    NonceExpired,
    NonceRegistryFull,
    NonceReplayed,
    NonceUnknown,
)
from bastion.tee.attestation.quote import REPORT_DATA_SIZE

NONCE_SIZE = 32


def tls_public_key_der(source: x509.Certificate | PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate's (or a bare) public key."""
    key = source.public_key() if isinstance(source, x509.Certificate) else source
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def report_data_for(tls_public_key_spki: bytes, nonce: bytes) -> bytes:
    """The 64 bytes an enclave puts in REPORTDATA to bind its quote to this key and nonce."""
    if len(nonce) != NONCE_SIZE:
        raise BindingError(f"an attestation nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    try:
        serialization.load_der_public_key(tls_public_key_spki)
    except (ValueError, TypeError) as exc:
        raise BindingError(
            "the TLS public key must be DER SubjectPublicKeyInfo bytes (use "
            "tls_public_key_der(certificate)), and these do not parse as one"
        ) from exc
    digest = hashlib.sha256(tls_public_key_spki + nonce).digest()
    return digest + bytes(REPORT_DATA_SIZE - len(digest))


@dataclass
class _Entry:
    peer: str
    expires_at: float
    spent: bool = False


class NonceRegistry:
    """Issues single-use, expiring nonces per peer; thread-safe and bounded in memory.

    A used or expired nonce is remembered for one extra time-to-live so that a late replay is
    reported as such (`NonceReplayed`, `NonceExpired`) rather than as unknown; after that it is
    forgotten and refused as `NonceUnknown`.  Each peer holds at most `max_per_peer` unused
    nonces (its oldest is dropped), and the registry at most `max_entries` in all.
    """

    def __init__(
        self,
        ttl_seconds: float = 60.0,
        *,
        max_per_peer: int = 16,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0 or max_per_peer < 1 or max_entries < max_per_peer:
            raise ValueError("NonceRegistry needs ttl_seconds > 0 and 1 <= max_per_peer <= max")
        self.ttl_seconds = ttl_seconds
        self._max_per_peer = max_per_peer
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def issue(self, peer: str) -> bytes:
        """A fresh 32-byte nonce that only `peer` may consume, once, within the TTL."""
        with self._lock:
            now = self._clock()
            self._forget_old(now)
            unused = [
                nonce
                for nonce, entry in self._entries.items()
                if entry.peer == peer and not entry.spent and entry.expires_at > now
            ]
            for nonce in unused[: max(0, len(unused) - self._max_per_peer + 1)]:
                del self._entries[nonce]
            if len(self._entries) >= self._max_entries:
                self._drop_tombstones(now)
            if len(self._entries) >= self._max_entries:
                raise NonceRegistryFull(
                    f"{len(self._entries)} attestation nonces are outstanding (limit "
                    f"{self._max_entries}); peers are requesting nonces without using them"
                )
            nonce = secrets.token_bytes(NONCE_SIZE)
            self._entries[nonce] = _Entry(peer, now + self.ttl_seconds)
            return nonce

    def consume(self, peer: str, nonce: bytes) -> None:
        """Accept `nonce` from `peer` once; raise a `NonceError` subclass otherwise."""
        with self._lock:
            now = self._clock()
            self._forget_old(now)
            entry = self._entries.get(bytes(nonce))
            if entry is None or entry.peer != peer:
                raise NonceUnknown(
                    f"attestation nonce from {peer!r} was never issued to it (or is long "
                    "expired): ask for a new nonce and attest again"
                )
            if entry.spent:
                raise NonceReplayed(
                    f"attestation nonce from {peer!r} was already used: replayed evidence"
                )
            if now >= entry.expires_at:
                raise NonceExpired(
                    f"attestation nonce from {peer!r} expired {now - entry.expires_at:.1f} s ago "
                    f"(time to live {self.ttl_seconds:g} s): ask for a new nonce"
                )
            entry.spent = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _forget_old(self, now: float) -> None:
        # Entries are in issue order and share one TTL, so the oldest expire first.
        while self._entries:
            nonce, entry = next(iter(self._entries.items()))
            if now < entry.expires_at + self.ttl_seconds:
                break
            del self._entries[nonce]

    def _drop_tombstones(self, now: float) -> None:
        for nonce in [n for n, e in self._entries.items() if e.spent or now >= e.expires_at]:
            del self._entries[nonce]
