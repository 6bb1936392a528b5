"""ECDSA P-256 in SGX's raw encodings: signatures as r||s, public keys as x||y (32 bytes each)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bastion.tee.attestation.errors import QuoteFormatError

_COORDINATE = 32
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def public_key_from_raw(xy: bytes) -> ec.EllipticCurvePublicKey:
    """Decode an uncompressed P-256 point given without its 0x04 prefix."""
    if len(xy) != 2 * _COORDINATE:
        raise QuoteFormatError(f"an ECDSA P-256 public key is 64 bytes, got {len(xy)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError as exc:
        raise QuoteFormatError(
            "the attestation public key is not a point on the P-256 curve"
        ) from exc


def raw_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 64-byte x||y form of a P-256 public key."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise QuoteFormatError(f"SGX uses P-256 keys, not {key.curve.name}")
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


def sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA256 signature over `data`, encoded as 64-byte r||s."""
    r, s = decode_dss_signature(key.sign(data, _ECDSA_SHA256))
    return r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")


def verify_raw(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """True when `signature` (r||s) is a valid ECDSA-SHA256 signature of `data` by `key`."""
    if len(signature) != 2 * _COORDINATE:
        return False
    r = int.from_bytes(signature[:_COORDINATE], "big")
    s = int.from_bytes(signature[_COORDINATE:], "big")
    if r == 0 or s == 0:
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True
