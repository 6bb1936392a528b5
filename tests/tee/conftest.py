"""Shared fixtures: one SGX signing key per session, and a SIGSTRUCT packer written from the
Intel SDM layout independently of ``bastion.tee.sigstruct`` (so the two check each other)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

#: Intel SDM Vol. 3D, "SIGSTRUCT", field by field (little-endian, no padding).
SIGSTRUCT_LAYOUT = struct.Struct(
    "<"
    "16s"  # HEADER                 0
    "I"  # VENDOR                  16
    "I"  # DATE                    20
    "16s"  # HEADER2               24
    "I"  # SWDEFINED               40
    "84x"  # RESERVED              44
    "384s"  # MODULUS             128
    "I"  # EXPONENT               512
    "384s"  # SIGNATURE           516
    "I"  # MISCSELECT             900
    "I"  # MISCMASK               904
    "B"  # CET_ATTRIBUTES         908
    "B"  # CET_ATTRIBUTES_MASK    909
    "2x"  # RESERVED              910
    "16s"  # ISVFAMILYID          912
    "Q"  # ATTRIBUTES.FLAGS       928
    "Q"  # ATTRIBUTES.XFRM        936
    "Q"  # ATTRIBUTEMASK.FLAGS    944
    "Q"  # ATTRIBUTEMASK.XFRM     952
    "32s"  # ENCLAVEHASH          960
    "16x"  # RESERVED             992
    "16s"  # ISVEXTPRODID        1008
    "H"  # ISVPRODID             1024
    "H"  # ISVSVN                1026
    "12x"  # RESERVED            1028
    "384s"  # Q1                 1040
    "384s"  # Q2                 1424
)
assert SIGSTRUCT_LAYOUT.size == 1808

HEADER = bytes.fromhex("06000000E10000000000010000000000")
HEADER2 = bytes.fromhex("01010000600000006000000001000000")

PackSigstruct = Callable[..., bytes]


def pack_sigstruct(
    key: rsa.RSAPrivateKey | None = None,
    *,
    mrenclave: bytes = bytes(range(32)),
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    flags: int = 0x4,
    xfrm: int = 0x3,
    flags_mask: int = 0xFFFF_FFFF_FFFF_FFFF,
    xfrm_mask: int = 0xFFFF_FFFF_FFF9_FF1B,
    misc_select: int = 0,
    misc_mask: int = 0xFFFF_FFFF,
    vendor: int = 0,
    date: int = 0x2024_0115,
    header: bytes = HEADER,
    header2: bytes = HEADER2,
) -> bytes:
    """Pack a SIGSTRUCT field by field; sign it (PKCS#1 v1.5, SHA-256) when a key is given."""
    fields: dict[str, Any] = {
        "modulus": bytes(384),
        "exponent": 3,
        "signature": bytes(384),
        "q1": bytes(384),
        "q2": bytes(384),
    }

    def pack() -> bytes:
        return SIGSTRUCT_LAYOUT.pack(
            header, vendor, date, header2, 0,
            fields["modulus"], fields["exponent"], fields["signature"],
            misc_select, misc_mask, 0, 0, bytes(16),
            flags, xfrm, flags_mask, xfrm_mask,
            mrenclave, bytes(16), isv_prod_id, isv_svn,
            fields["q1"], fields["q2"],
        )  # fmt: skip

    if key is None:
        return pack()
    unsigned = pack()
    to_sign = unsigned[0:128] + unsigned[900:1028]
    s = int.from_bytes(key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256()), "big")
    n = key.public_key().public_numbers().n
    fields["modulus"] = n.to_bytes(384, "little")
    fields["signature"] = s.to_bytes(384, "little")
    q1 = s**2 // n
    fields["q1"] = q1.to_bytes(384, "little")
    fields["q2"] = ((s**3 - q1 * s * n) // n).to_bytes(384, "little")  # SDM's definition
    return pack()


@pytest.fixture(scope="session")
def enclave_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=3, key_size=3072)


@pytest.fixture(scope="session")
def packed_sigstruct() -> PackSigstruct:
    """``pack_sigstruct`` (a pure function, so session scope is safe under hypothesis)."""
    return pack_sigstruct


@pytest.fixture(scope="session")
def sigstruct_layout() -> struct.Struct:
    return SIGSTRUCT_LAYOUT
