"""SIGSTRUCT parsing, signature checks and the writer, against an independent packer."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import BastionError
from bastion.tee.sigstruct import (
    EnclaveAttributes,
    SigstructError,
    build_sigstruct,
    parse_sigstruct,
    read_sigstruct,
)

PackSigstruct = Callable[..., bytes]
ENCLAVEHASH, SWDEFINED, MODULUS, Q1 = 960, 40, 128, 1040


def test_fields_are_read_from_their_documented_offsets(
    enclave_key: rsa.RSAPrivateKey, packed_sigstruct: PackSigstruct
) -> None:
    mrenclave = hashlib.sha256(b"enclave").digest()
    data = packed_sigstruct(
        enclave_key,
        mrenclave=mrenclave,
        isv_prod_id=0x1234,
        isv_svn=0x0102,
        flags=0x16,
        xfrm=0xE7,
        misc_select=1,
        vendor=0x8086,
        date=0x2024_0115,
    )
    sig = parse_sigstruct(data)

    modulus = enclave_key.public_key().public_numbers().n.to_bytes(384, "little")
    assert sig.mrenclave == mrenclave
    assert sig.mrsigner == hashlib.sha256(modulus).digest()
    assert sig.isv_prod_id == 0x1234
    assert sig.isv_svn == 0x0102
    assert sig.attributes == EnclaveAttributes(flags=0x16, xfrm=0xE7)
    assert sig.attributes.provisionkey and sig.attributes.mode64bit and sig.debug
    assert sig.misc_select == 1
    assert sig.vendor == 0x8086
    assert sig.date == dt.date(2024, 1, 15)
    assert sig.exponent == 3
    sig.verify_signature()


@settings(max_examples=60, deadline=None)
@given(
    mrenclave=st.binary(min_size=32, max_size=32),
    isv_prod_id=st.integers(0, 0xFFFF),
    isv_svn=st.integers(0, 0xFFFF),
    flags=st.integers(0, 2**64 - 1),
    xfrm=st.integers(0, 2**64 - 1),
    misc_select=st.integers(0, 2**32 - 1),
)
def test_any_field_values_round_trip_through_the_parser(
    packed_sigstruct: PackSigstruct,
    mrenclave: bytes,
    isv_prod_id: int,
    isv_svn: int,
    flags: int,
    xfrm: int,
    misc_select: int,
) -> None:
    data = packed_sigstruct(
        mrenclave=mrenclave,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        flags=flags,
        xfrm=xfrm,
        misc_select=misc_select,
    )
    sig = parse_sigstruct(data)
    assert (sig.mrenclave, sig.isv_prod_id, sig.isv_svn) == (mrenclave, isv_prod_id, isv_svn)
    assert (sig.attributes.flags, sig.attributes.xfrm, sig.misc_select) == (
        flags,
        xfrm,
        misc_select,
    )
    assert sig.debug == bool(flags & 0b10)


def test_debug_flag_is_bit_1_of_attributes_flags(packed_sigstruct: PackSigstruct) -> None:
    production = parse_sigstruct(packed_sigstruct(flags=0x4))
    debug = parse_sigstruct(packed_sigstruct(flags=0x6))
    assert not production.debug and production.attributes.flag_names() == ["mode64bit"]
    assert debug.debug and debug.attributes.flag_names() == ["debug", "mode64bit"]
    odd = EnclaveAttributes(flags=(1 << 7) | (1 << 5) | (1 << 40), xfrm=0)
    assert odd.flag_names() == ["einittokenkey", "kss", "bit40"]


@pytest.mark.parametrize("size", [0, 100, 1807, 1809, 4096])
def test_wrong_size_says_what_was_expected(size: int, tmp_path: Path) -> None:
    path = tmp_path / "bad.sig"
    path.write_bytes(bytes(size))
    with pytest.raises(SigstructError, match=f"expected 1808 bytes .*got {size}"):
        read_sigstruct(path)


def test_garbage_and_bad_headers_are_refused(packed_sigstruct: PackSigstruct) -> None:
    with pytest.raises(SigstructError, match="bad HEADER"):
        parse_sigstruct(b"\xff" * 1808)
    with pytest.raises(SigstructError, match="bad HEADER2"):
        parse_sigstruct(packed_sigstruct(header2=bytes(16)))
    with pytest.raises(SigstructError, match="bad HEADER type"):
        parse_sigstruct(packed_sigstruct(header=bytes.fromhex("06000000E1000000000001000000000F")))
    with pytest.raises(SigstructError, match="VENDOR is 0x1234"):
        parse_sigstruct(packed_sigstruct(vendor=0x1234))
    assert issubclass(SigstructError, BastionError)


def test_unreadable_paths_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SigstructError, match="cannot read"):
        read_sigstruct(tmp_path / "missing.sig")
    with pytest.raises(SigstructError, match="is a directory"):
        read_sigstruct(tmp_path)


def test_a_good_signature_verifies(
    enclave_key: rsa.RSAPrivateKey, packed_sigstruct: PackSigstruct
) -> None:
    parse_sigstruct(packed_sigstruct(enclave_key)).verify_signature()


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (ENCLAVEHASH, "signature does not verify"),  # second signed region
        (SWDEFINED, "signature does not verify"),  # first signed region
        (MODULUS + 7, "signature does not verify"),  # a different key
        (Q1 + 3, "Q1/Q2 do not match"),
    ],
)
def test_a_flipped_byte_is_caught(
    offset: int,
    message: str,
    enclave_key: rsa.RSAPrivateKey,
    packed_sigstruct: PackSigstruct,
) -> None:
    data = bytearray(packed_sigstruct(enclave_key))
    data[offset] ^= 0x01
    with pytest.raises(SigstructError, match=message):
        parse_sigstruct(bytes(data)).verify_signature()


def test_an_unsigned_sigstruct_does_not_verify(packed_sigstruct: PackSigstruct) -> None:
    with pytest.raises(SigstructError, match="not a 3072-bit RSA modulus"):
        parse_sigstruct(packed_sigstruct()).verify_signature()


def test_gramine_binary_date_is_read_too(packed_sigstruct: PackSigstruct) -> None:
    (gramine_date,) = struct.unpack("<I", struct.pack("<HBB", 2023, 2, 20))
    assert parse_sigstruct(packed_sigstruct(date=gramine_date)).date == dt.date(2023, 2, 20)
    assert parse_sigstruct(packed_sigstruct(date=0x2049_0305)).date == dt.date(2049, 3, 5)
    assert parse_sigstruct(packed_sigstruct(date=0)).date is None


def test_writer_follows_the_documented_layout(
    enclave_key: rsa.RSAPrivateKey, sigstruct_layout: struct.Struct
) -> None:
    mrenclave = os.urandom(32)
    data = build_sigstruct(
        enclave_key,
        mrenclave=mrenclave,
        isv_prod_id=9,
        isv_svn=4,
        debug=True,
        date=dt.date(2025, 12, 31),
    )
    (header, vendor, date, header2, _sw, modulus, exponent, signature, misc, misc_mask,
     _cet, _cet_mask, _family, flags, xfrm, flags_mask, xfrm_mask, enclavehash, _ext,
     prod_id, svn, q1, q2) = sigstruct_layout.unpack(data)  # fmt: skip

    assert header == bytes.fromhex("06000000E10000000000010000000000")
    assert header2 == bytes.fromhex("01010000600000006000000001000000")
    assert (vendor, date, exponent) == (0, 0x2025_1231, 3)
    assert (misc, misc_mask) == (0, 0xFFFF_FFFF)
    assert (flags, xfrm) == (0x6, 0x3)
    assert (flags_mask, xfrm_mask) == (0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFF9_FF1B)
    assert (enclavehash, prod_id, svn) == (mrenclave, 9, 4)
    n = int.from_bytes(modulus, "little")
    assert n == enclave_key.public_key().public_numbers().n
    s = int.from_bytes(signature, "little")
    enclave_key.public_key().verify(
        s.to_bytes(384, "big"), data[:128] + data[900:1028], padding.PKCS1v15(), hashes.SHA256()
    )
    assert int.from_bytes(q1, "little") == s**2 // n
    assert int.from_bytes(q2, "little") == (s**3 - (s**2 // n) * s * n) // n


def test_writer_refuses_bad_input(enclave_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(SigstructError, match="MRENCLAVE must be 32 bytes"):
        build_sigstruct(enclave_key, mrenclave=b"short")
    with pytest.raises(SigstructError, match="isv_svn must be in 0..65535"):
        build_sigstruct(enclave_key, mrenclave=bytes(32), isv_svn=70000)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(BastionError, match="SGX requires 3072"):
        build_sigstruct(weak, mrenclave=bytes(32))


def test_to_dict_is_json_ready(enclave_key: rsa.RSAPrivateKey) -> None:
    sig = parse_sigstruct(build_sigstruct(enclave_key, mrenclave=bytes(32), isv_svn=2))
    fields = sig.to_dict()
    assert fields["mrenclave"] == "00" * 32
    assert fields["mrsigner"] == sig.mrsigner.hex()
    assert fields["isv_svn"] == 2 and fields["debug"] is False
    assert fields["attributes"]["names"] == ["mode64bit"]
