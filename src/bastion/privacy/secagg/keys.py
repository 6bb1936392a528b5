"""Per-round key material for secure aggregation (Bonawitz et al. 2017, Sections 3 and 4).

Each client makes two X25519 key pairs per round: ``c`` to agree AEAD keys for the
shares it sends other clients through the server, ``s`` to agree pairwise mask seeds.
Both public keys are signed with the client's long-term identity key (the key of its
mTLS certificate), so a server that substitutes keys to sit in the middle is caught;
the same key signs the survivor set in ConsistencyCheck.
Every derived key goes through HKDF-SHA256 with its purpose, session, round and the two
names in ``info``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.privacy.errors import SecAggAborted, SecAggError
from bastion.privacy.secagg.wire import join_fields

IdentityPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
IdentityPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
IdentityVerifier = Callable[[str, bytes], IdentityPublicKey]
"""Given a client's name and the credential it advertised (its mTLS certificate, PEM), the
identity public key that credential proves for that name; raises when it proves nothing."""

PUBLIC_KEY_BYTES = 32
_NONCE_BYTES = 12
_MIN_RSA_BITS = 2048
_DOMAIN = b"bastion-secagg/v1"


@dataclass(frozen=True)
class RoundKeys:
    """The two X25519 key pairs a client uses in one round."""

    c_private: x25519.X25519PrivateKey
    s_private: x25519.X25519PrivateKey

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @property
    def c_public(self) -> bytes:
        return public_bytes(self.c_private)

    @property
    def s_public(self) -> bytes:
        return public_bytes(self.s_private)

    def s_private_bytes(self) -> bytes:
        """The raw 32-byte ``s`` secret key, which the client secret-shares for dropout recovery."""
        return self.s_private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )


def public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private(raw: bytes) -> x25519.X25519PrivateKey:
    """An X25519 private key from its 32 raw bytes (e.g. reconstructed from shares)."""
    try:
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    except ValueError as exc:
        raise SecAggError(f"not a valid X25519 private key: {exc}") from None


def agree(private: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret; a low-order or malformed peer key aborts the round."""
    try:
        peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
        return private.exchange(peer)
    except ValueError as exc:
        raise SecAggAborted(f"key agreement failed on a peer's public key: {exc}") from None


def derive_key(
    shared_secret: bytes, purpose: bytes, session_id: bytes, round_number: int, a: str, b: str
) -> bytes:
    """A 32-byte key for ``purpose`` between clients ``a`` and ``b`` (symmetric in a, b)."""
    first, second = sorted((a, b))
    info = join_fields(
        _DOMAIN,
        purpose,
        session_id,
        str(round_number).encode(),
        first.encode(),
        second.encode(),
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


def pairwise_seed(
    s_private: x25519.X25519PrivateKey,
    peer_s_public: bytes,
    session_id: bytes,
    round_number: int,
    me: str,
    peer: str,
) -> bytes:
    """The 256-bit seed of the pairwise mask between ``me`` and ``peer``."""
    secret = agree(s_private, peer_s_public)
    return derive_key(secret, b"pairwise-mask-seed", session_id, round_number, me, peer)


def share_key(
    c_private: x25519.X25519PrivateKey,
    peer_c_public: bytes,
    session_id: bytes,
    round_number: int,
    me: str,
    peer: str,
) -> bytes:
    """The ChaCha20-Poly1305 key for shares exchanged between ``me`` and ``peer``."""
    secret = agree(c_private, peer_c_public)
    return derive_key(secret, b"share-encryption", session_id, round_number, me, peer)


def _share_aad(session_id: bytes, round_number: int, sender: str, recipient: str) -> bytes:
    return join_fields(
        _DOMAIN,
        b"shares",
        session_id,
        str(round_number).encode(),
        sender.encode(),
        recipient.encode(),
    )


def encrypt_for(
    key: bytes, plaintext: bytes, session_id: bytes, round_number: int, sender: str, recipient: str
) -> bytes:
    """Encrypt shares from ``sender`` to ``recipient``; the header is bound as associated data."""
    nonce = os.urandom(_NONCE_BYTES)
    aad = _share_aad(session_id, round_number, sender, recipient)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt_from(
    key: bytes, ciphertext: bytes, session_id: bytes, round_number: int, sender: str, recipient: str
) -> bytes:
    """Decrypt shares; a forged, replayed or redirected ciphertext aborts the round."""
    nonce, body = ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:]
    aad = _share_aad(session_id, round_number, sender, recipient)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, aad)
    except (InvalidTag, ValueError):
        raise SecAggAborted(
            f"shares from {sender!r} to {recipient!r} failed authentication: "
            "the server or a peer tampered with them"
        ) from None


def advertisement_payload(
    session_id: bytes, round_number: int, client: str, c_public: bytes, s_public: bytes
) -> bytes:
    """The exact bytes a client signs to vouch for its round keys."""
    return join_fields(
        _DOMAIN,
        b"advertise",
        session_id,
        str(round_number).encode(),
        client.encode(),
        c_public,
        s_public,
    )


def consistency_payload(
    session_id: bytes, round_number: int, signer: str, survivors: frozenset[str]
) -> bytes:
    """The exact bytes a client signs in ConsistencyCheck: the set U3 it was told, sorted."""
    return join_fields(
        _DOMAIN,
        b"consistency",
        session_id,
        str(round_number).encode(),
        signer.encode(),
        join_fields(*(name.encode() for name in sorted(survivors))),
    )


def sign(identity: IdentityPrivateKey, payload: bytes) -> bytes:
    """Sign with the identity key: Ed25519, ECDSA-SHA256 or RSA-PSS-SHA256."""
    if isinstance(identity, ed25519.Ed25519PrivateKey):
        return identity.sign(payload)
    if isinstance(identity, ec.EllipticCurvePrivateKey):
        return identity.sign(payload, ec.ECDSA(hashes.SHA256()))
    if isinstance(identity, rsa.RSAPrivateKey):
        if identity.key_size < _MIN_RSA_BITS:
            raise SecAggError(f"RSA identity keys need at least {_MIN_RSA_BITS} bits")
        return identity.sign(payload, _pss(), hashes.SHA256())
    raise SecAggError(
        f"identity key of type {type(identity).__name__} is not supported; "
        "use an Ed25519, ECDSA or RSA (>= 2048 bits) key"
    )


def verify(identity: IdentityPublicKey, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` over ``payload`` is valid under the identity public key."""
    try:
        if isinstance(identity, ed25519.Ed25519PublicKey):
            identity.verify(signature, payload)
        elif isinstance(identity, ec.EllipticCurvePublicKey):
            identity.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(identity, rsa.RSAPublicKey) and identity.key_size >= _MIN_RSA_BITS:
            identity.verify(signature, payload, _pss(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
