"""Whatever bytes a peer sends, verification ends in acceptance or an AttestationError."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.tee.attestation import AttestationError, AttestationPolicy, verify_quote
from bastion.tee.attestation.der import read_all
from bastion.tee.attestation.pck import load_pem_chain
from bastion.tee.attestation.quote import parse_quote

REPORT_DATA = b"\x33" * 64
POLICY = AttestationPolicy(mrenclave=["aa" * 32], collateral="none")
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def good_quote(pki) -> bytes:
    return pki.quote(report_data=REPORT_DATA)


def attempt(pki, data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        verify_quote(data, POLICY, REPORT_DATA, pki.root, pki.now)


def test_the_unmutated_quote_verifies(pki, good_quote) -> None:
    assert good_quote[FIXED_PART:].startswith(b"-----BEGIN CERTIFICATE-----")
    assert (
        verify_quote(good_quote, POLICY, REPORT_DATA, pki.root, pki.now).mr_enclave == b"\xaa" * 32
    )


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(pki, data: bytes) -> None:
    attempt(pki, data)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=5000))
def test_truncations(pki, good_quote, cut: int) -> None:
    attempt(pki, good_quote[:cut])


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255)
        ),
        min_size=1,
        max_size=8,
    )
)
def test_byte_mutations(pki, good_quote, edits: list[tuple[int, int]]) -> None:
    raw = bytearray(good_quote)
    for position, value in edits:
        raw[position % len(raw)] = value
    attempt(pki, bytes(raw))


@FUZZ
@given(position=st.integers(min_value=0, max_value=1100), junk=st.binary(min_size=1, max_size=64))
def test_insertions_in_the_fixed_part(pki, good_quote, position: int, junk: bytes) -> None:
    attempt(pki, good_quote[:position] + junk + good_quote[position:])


#: Header, report body, signatures, keys, QE report, QE auth data and the certification data's
#: type and size: every byte up to the PEM chain is signed, bound or checked exactly.
FIXED_PART = 1052


@FUZZ
@given(position=st.integers(min_value=0, max_value=FIXED_PART - 1))
def test_signed_region_flips_are_always_refused(pki, good_quote, position: int) -> None:
    """Any change to bytes covered by a signature or the key binding must be refused."""
    raw = bytearray(good_quote)
    raw[position] ^= 0x01
    with pytest.raises(AttestationError):
        verify_quote(bytes(raw), POLICY, REPORT_DATA, pki.root, pki.now)


@FUZZ
@given(offset=st.integers(min_value=0, max_value=1500))
def test_pem_flips_are_refused_unless_the_certificates_are_unchanged(
    pki, good_quote, offset: int
) -> None:
    """The PEM chain is protected by its certificates' signatures, not byte for byte: a flip
    either breaks verification or only touches PEM whitespace, leaving the same DER."""
    position = FIXED_PART + offset % (len(good_quote) - FIXED_PART)
    raw = bytearray(good_quote)
    raw[position] ^= 0x01
    try:
        verify_quote(bytes(raw), POLICY, REPORT_DATA, pki.root, pki.now)
    except AttestationError:
        return
    original = load_pem_chain(good_quote[FIXED_PART:], "chain")
    accepted = load_pem_chain(bytes(raw[FIXED_PART:]), "chain")
    assert [c.tbs_certificate_bytes for c in accepted] == [
        c.tbs_certificate_bytes for c in original
    ]


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=512))
def test_der_reader_never_crashes(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        read_all(data)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=512))
def test_pem_chain_loader_never_crashes(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        load_pem_chain(b"-----BEGIN CERTIFICATE-----\n" + data, "fuzzed chain")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=432, max_size=1200))
def test_parser_on_random_bodies_behind_a_valid_header(data: bytes) -> None:
    header = struct.pack(
        "<HHIHH16s20s", 3, 2, 0, 8, 16, bytes.fromhex("939a7233f79c4ca9940a0db3957f0607"), b""
    )
    with contextlib.suppress(AttestationError):
        parse_quote(header + data)


class StaticProvider:
    def __init__(self, collateral) -> None:
        self.collateral = collateral

    def fetch(self, fmspc: bytes, pck_ca: str):
        return self.collateral


@FUZZ
@given(
    which=st.sampled_from(["tcb_info", "qe_identity"]),
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255)
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_collateral_bodies(pki, good_quote, which: str, edits) -> None:
    source = pki.collateral()
    body = bytearray(getattr(source, which))
    for position, value in edits:
        body[position % len(body)] = value
    changed = pki.collateral(**{which: bytes(body)})
    policy = AttestationPolicy(mrenclave=["aa" * 32])
    with contextlib.suppress(AttestationError):
        verify_quote(
            good_quote,
            policy,
            REPORT_DATA,
            pki.root,
            pki.now,
            collateral_provider=StaticProvider(changed),
        )
