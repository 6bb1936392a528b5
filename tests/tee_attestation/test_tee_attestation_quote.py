"""The DCAP v3 parser reads every documented field at its documented offset, and nothing else."""

from __future__ import annotations

import hashlib
import struct

import pytest

from bastion.tee.attestation import (
    MAX_QUOTE_SIZE,
    QuoteFormatError,
    SimulatedProvider,
    build_simulated_hierarchy,
    parse_quote,
)


def test_documented_structure_sizes(pki) -> None:
    assert struct.calcsize(pki.HEADER_FORMAT) == 48  # sgx_quote_header_t
    assert struct.calcsize(pki.BODY_FORMAT) == 384  # sgx_report_body_t


def test_parses_every_field_of_an_independently_packed_quote(pki) -> None:
    report_data = hashlib.sha256(b"tls key and nonce").digest() + bytes(32)
    raw = pki.quote(isv_prod_id=0x1234, isv_svn=0x0BCD, report_data=report_data, flags=0x7)

    quote = parse_quote(raw)

    assert quote.header.version == 3
    assert quote.header.att_key_type == 2
    assert quote.header.tee_type == 0
    assert (quote.header.qe_svn, quote.header.pce_svn) == (8, 13)
    assert quote.header.qe_vendor_id == pki.INTEL_VENDOR
    body = quote.report_body
    assert body.mr_enclave == pki.MRENCLAVE
    assert body.mr_signer == pki.MRSIGNER
    assert (body.isv_prod_id, body.isv_svn) == (0x1234, 0x0BCD)
    assert body.report_data == report_data
    assert body.cpu_svn == bytes(range(16))
    assert (body.flags, body.xfrm) == (0x7, 0x7)
    assert body.debug is True  # flags bit 1
    assert quote.attestation_public_key == pki.raw_point(pki.attestation_key)
    assert quote.qe_report_body.mr_signer == pki.INTEL_QE_SIGNER
    assert quote.qe_report_body.isv_prod_id == 1
    assert quote.qe_auth_data == pki.QE_AUTH
    assert quote.certification_data_type == 5
    assert quote.certification_data.startswith(b"-----BEGIN CERTIFICATE-----")
    assert quote.signed_bytes == raw[:432]
    assert quote.qe_report_bytes == raw[564:948]


def test_fields_sit_at_the_documented_absolute_offsets(pki) -> None:
    raw = pki.quote(isv_prod_id=0x0102, isv_svn=0x0304)
    quote = parse_quote(raw)
    # Offsets from the table at the top of quote.py: header 48 bytes, then the report body.
    assert raw[48 + 64 : 48 + 96] == quote.report_body.mr_enclave
    assert raw[48 + 128 : 48 + 160] == quote.report_body.mr_signer
    assert struct.unpack_from("<HH", raw, 48 + 256) == (0x0102, 0x0304)
    assert raw[48 + 320 : 48 + 384] == quote.report_body.report_data
    assert struct.unpack_from("<I", raw, 432)[0] == len(raw) - 436
    assert raw[436:500] == quote.signature
    assert raw[500:564] == quote.attestation_public_key
    assert raw[948:1012] == quote.qe_report_signature
    assert struct.unpack_from("<H", raw, 1012)[0] == len(quote.qe_auth_data)


def test_report_body_pack_round_trips(pki) -> None:
    quote = parse_quote(pki.quote(isv_svn=9, misc_select=0xA5))
    assert quote.report_body.pack() == quote.signed_bytes[48:]
    assert quote.report_body.misc_select == 0xA5


def test_simulated_quotes_follow_the_same_layout() -> None:
    hierarchy = build_simulated_hierarchy()
    provider = SimulatedProvider(
        hierarchy, mr_enclave="11" * 32, mr_signer="22" * 32, isv_prod_id=5, isv_svn=6, debug=True
    )
    raw = provider.quote(b"\x42" * 64).quote
    version, key_type, tee, _, _, vendor, _ = struct.unpack_from("<HHIHH16s20s", raw, 0)
    assert (version, key_type, tee) == (3, 2, 0)
    assert vendor == bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
    fields = struct.unpack_from("<16sI12s16sQQ32s32s32s32s64sHHH42s16s64s", raw, 48)
    flags, mr_enclave, mr_signer = fields[4], fields[6], fields[8]
    assert flags & 0x2  # DEBUG
    assert mr_enclave == b"\x11" * 32 and mr_signer == b"\x22" * 32
    assert fields[11:13] == (5, 6)
    assert fields[16] == b"\x42" * 64


@pytest.mark.parametrize("cut", [0, 1, 47, 48, 300, 431, 432, 435, 436, 500, 1011, 1013, 1050])
def test_truncated_quote_is_a_format_error(pki, cut: int) -> None:
    with pytest.raises(QuoteFormatError) as info:
        parse_quote(pki.quote()[:cut])
    assert info.value.reason == "quote_truncated"


def test_cut_inside_certification_data_is_a_format_error(pki) -> None:
    raw = bytearray(pki.quote()[:-10])
    with pytest.raises(QuoteFormatError, match="truncated"):
        parse_quote(bytes(raw))
    struct.pack_into("<I", raw, 432, len(raw) - 436)  # outer length agrees; inner size does not
    with pytest.raises(QuoteFormatError, match="certification data needs"):
        parse_quote(bytes(raw))


def test_oversized_quote_is_refused_before_parsing(pki) -> None:
    raw = pki.quote(chain=b"A" * (MAX_QUOTE_SIZE))
    with pytest.raises(QuoteFormatError) as info:
        parse_quote(raw)
    assert info.value.reason == "quote_oversized"
    assert "64" in str(info.value) or str(MAX_QUOTE_SIZE) in str(info.value)


def test_trailing_bytes_are_refused(pki) -> None:
    raw = bytearray(pki.quote() + b"junk")
    struct.pack_into("<I", raw, 432, len(raw) - 436)  # length covers the junk too
    with pytest.raises(QuoteFormatError, match="unexpected bytes"):
        parse_quote(bytes(raw))


def test_signature_length_field_must_match(pki) -> None:
    raw = bytearray(pki.quote())
    struct.pack_into("<I", raw, 432, 10)
    with pytest.raises(QuoteFormatError, match="signature data"):
        parse_quote(bytes(raw))


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (0, "<H", 4, "version 4"),
        (2, "<H", 3, "key type 3"),
        (4, "<I", 0x81, "not an SGX quote"),
    ],
)
def test_unsupported_header_is_refused(
    pki, offset: int, fmt: str, value: int, message: str
) -> None:
    raw = bytearray(pki.quote())
    struct.pack_into(fmt, raw, offset, value)
    with pytest.raises(QuoteFormatError, match=message):
        parse_quote(bytes(raw))


def test_non_bytes_input_is_a_format_error() -> None:
    with pytest.raises(QuoteFormatError, match="bytes"):
        parse_quote("not bytes")  # type: ignore[arg-type]
