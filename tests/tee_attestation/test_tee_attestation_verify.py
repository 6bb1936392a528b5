"""verify_quote accepts a genuine, policy-conforming, bound quote and names each broken link."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID

from bastion.errors import BastionError
from bastion.tee.attestation import (
    AttestationError,
    AttestationKeyNotBound,
    AttestationPolicy,
    CertificateChainError,
    PolicyViolation,
    QeIdentityMismatch,
    QeReportSignatureInvalid,
    QuoteFormatError,
    QuoteSignatureInvalid,
    ReportDataMismatch,
    intel_sgx_root_ca,
    report_data_for,
    tls_public_key_der,
    verify_quote,
)

NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def tls_key(pki):
    return pki.new_key()


@pytest.fixture(scope="module")
def report_data(tls_key) -> bytes:
    return report_data_for(tls_public_key_der(tls_key.public_key()), NONCE)


def policy(**fields) -> AttestationPolicy:
    settings = {"mrenclave": ["aa" * 32], "collateral": "none"} | fields
    return AttestationPolicy(**settings)


def verify(pki, raw: bytes, expected: bytes, **fields):
    return verify_quote(raw, policy(**fields), expected, pki.root, pki.now)


def test_good_quote_is_accepted_and_says_tcb_was_not_checked(pki, report_data, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bastion.tee.attestation")
    result = verify(pki, pki.quote(report_data=report_data), report_data)
    assert result.mr_enclave == pki.MRENCLAVE
    assert result.mr_signer == pki.MRSIGNER
    assert (result.isv_prod_id, result.isv_svn) == (7, 3)
    assert result.simulated is False and result.debug is False
    assert result.tcb_checked is False
    assert result.tcb_status == "NotChecked"
    assert any("collateral: none" in note for note in result.notes)
    assert "TCB status not checked" in caplog.text
    assert "SIMULATED" not in caplog.text


def test_mrsigner_product_and_svn_policy_is_accepted(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, isv_svn=5)
    result = verify(
        pki, raw, report_data, mrenclave=[], mrsigner="BB" * 32, isv_prod_id=7, min_isv_svn=5
    )
    assert result.isv_svn == 5


@pytest.mark.parametrize(
    ("quote_fields", "policy_fields", "reason"),
    [
        ({"mr_enclave": b"\xcc" * 32}, {}, "mrenclave"),
        (
            {"mr_signer": b"\xcc" * 32},
            {"mrenclave": [], "mrsigner": "bb" * 32, "isv_prod_id": 7},
            "mrsigner",
        ),
        (
            {"isv_prod_id": 8},
            {"mrenclave": [], "mrsigner": "bb" * 32, "isv_prod_id": 7},
            "isv_prod_id",
        ),
        ({"isv_svn": 2}, {"min_isv_svn": 3}, "isv_svn"),
        ({"flags": 0x7}, {}, "debug"),
    ],
)
def test_policy_violations_are_named(pki, report_data, quote_fields, policy_fields, reason) -> None:
    raw = pki.quote(report_data=report_data, **quote_fields)
    with pytest.raises(PolicyViolation) as info:
        verify(pki, raw, report_data, **policy_fields)
    assert info.value.reason == reason


def test_debug_enclave_is_accepted_only_when_policy_allows(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, flags=0x7)
    assert verify(pki, raw, report_data, allow_debug=True).debug is True


def test_bad_quote_signature_is_refused(pki, report_data) -> None:
    raw = bytearray(pki.quote(report_data=report_data))
    raw[436] ^= 0x01  # first byte of the ISV report signature
    with pytest.raises(QuoteSignatureInvalid):
        verify(pki, bytes(raw), report_data)


def test_report_body_altered_after_signing_is_refused(pki, report_data) -> None:
    raw = bytearray(pki.quote(report_data=report_data, isv_svn=1))
    raw[48 + 258] = 9  # raise ISV SVN after the attestation key signed
    with pytest.raises(QuoteSignatureInvalid):
        verify(pki, bytes(raw), report_data)


def test_quote_signed_by_another_key_is_refused(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, signing_key=pki.new_key())
    with pytest.raises(QuoteSignatureInvalid):
        verify(pki, raw, report_data)


def test_bad_qe_report_signature_is_refused(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, qe_signing_key=pki.new_key())
    with pytest.raises(QeReportSignatureInvalid):
        verify(pki, raw, report_data)


def test_attestation_key_not_bound_is_refused(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, qe_report_data=bytes(64))
    with pytest.raises(AttestationKeyNotBound):
        verify(pki, raw, report_data)


def test_nonzero_upper_half_of_qe_report_data_is_refused(pki, report_data) -> None:
    binding = hashlib.sha256(pki.raw_point(pki.attestation_key) + pki.QE_AUTH).digest()
    raw = pki.quote(report_data=report_data, qe_report_data=binding + b"\x01" * 32)
    with pytest.raises(AttestationKeyNotBound):
        verify(pki, raw, report_data)


def test_report_not_from_intel_quoting_enclave_is_refused(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, qe_signer=b"\x01" * 32)
    with pytest.raises(QeIdentityMismatch):
        verify(pki, raw, report_data)


def test_pck_chain_under_another_root_is_refused(pki, other_pki, report_data) -> None:
    raw = other_pki.quote(report_data=report_data)
    with pytest.raises(CertificateChainError) as info:
        verify(pki, raw, report_data)
    assert info.value.reason == "untrusted_root"
    assert "Test SGX Root CA" in str(info.value)


def test_chain_that_swaps_in_a_forged_root_copy_is_refused(pki, other_pki, report_data) -> None:
    # The other PKI's chain, but claiming the pinned root's name: signatures must still fail.
    forged_root = pki.issue(
        "Test SGX Root CA", other_pki.root_key, "Test SGX Root CA", other_pki.root_key, ca=True
    )
    chain = pki.pem(other_pki.pck, other_pki.ca, forged_root)
    raw = other_pki.quote(report_data=report_data, chain=chain)
    with pytest.raises(CertificateChainError):
        verify(pki, raw, report_data)


def test_default_anchor_is_intel_and_refuses_a_test_root(pki, report_data) -> None:
    assert "Intel SGX Root CA" in intel_sgx_root_ca().subject.rfc4514_string()
    assert intel_sgx_root_ca().fingerprint(hashes.SHA256()).hex().startswith("44a0196b")
    raw = pki.quote(report_data=report_data)
    with pytest.raises(CertificateChainError, match="not a pinned root"):
        verify_quote(raw, policy(), report_data, now=pki.now)


def test_expired_pck_certificate_is_refused(pki, report_data) -> None:
    expired = pki.issue(
        "Test SGX PCK Certificate",
        pki.pck_key,
        "Test SGX PCK Processor CA",
        pki.ca_key,
        ca=False,
        not_before=pki.now - dt.timedelta(days=60),
        not_after=pki.now - dt.timedelta(days=1),
    )
    raw = pki.quote(report_data=report_data, chain=pki.pem(expired, pki.ca))
    with pytest.raises(CertificateChainError) as info:
        verify(pki, raw, report_data)
    assert info.value.reason == "certificate_expired"


def test_chain_without_root_copy_in_any_order_is_accepted(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, chain=pki.pem(pki.ca, pki.pck))
    assert verify(pki, raw, report_data).mr_enclave == pki.MRENCLAVE


def test_intermediate_that_is_not_a_ca_is_refused(pki, report_data) -> None:
    fake_ca = pki.issue(
        "Test SGX PCK Processor CA", pki.ca_key, "Test SGX Root CA", pki.root_key, ca=False
    )
    raw = pki.quote(report_data=report_data, chain=pki.pem(pki.pck, fake_ca))
    with pytest.raises(CertificateChainError, match="not a CA"):
        verify(pki, raw, report_data)


def test_report_data_for_another_tls_key_is_refused(pki, report_data) -> None:
    other = report_data_for(tls_public_key_der(pki.new_key().public_key()), NONCE)
    raw = pki.quote(report_data=other)
    with pytest.raises(ReportDataMismatch):
        verify(pki, raw, report_data)


def test_report_data_for_another_nonce_is_refused(pki, tls_key, report_data) -> None:
    stale = report_data_for(tls_public_key_der(tls_key.public_key()), b"\x01" * 32)
    with pytest.raises(ReportDataMismatch):
        verify(pki, pki.quote(report_data=stale), report_data)


def test_other_quoting_enclave_vendor_is_refused(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, vendor=b"\x00" * 16)
    with pytest.raises(QuoteFormatError, match="vendor"):
        verify(pki, raw, report_data)


def test_certification_data_other_than_a_pck_chain_is_refused(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, cert_type=3, chain=b"\x00" * 400)
    with pytest.raises(QuoteFormatError) as info:
        verify(pki, raw, report_data)
    assert info.value.reason == "certification_data_type"


def test_garbage_pem_in_certification_data_is_a_format_error(pki, report_data) -> None:
    raw = pki.quote(report_data=report_data, chain=b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(QuoteFormatError):
        verify(pki, raw, report_data)


def test_policy_that_pins_nothing_is_refused_at_verification(pki, report_data) -> None:
    with pytest.raises(PolicyViolation) as info:
        verify_quote(
            pki.quote(report_data=report_data),
            AttestationPolicy(collateral="none"),
            report_data,
            pki.root,
            pki.now,
        )
    assert info.value.reason == "policy_pins_nothing"


def test_expected_report_data_must_be_64_bytes(pki) -> None:
    with pytest.raises(AttestationError, match="64 bytes"):
        verify(pki, pki.quote(), b"short")


def test_every_failure_is_a_bastion_error_with_a_reason(pki, report_data) -> None:
    with pytest.raises(BastionError) as info:
        verify(pki, pki.quote(report_data=report_data, mr_enclave=b"\x01" * 32), report_data)
    assert isinstance(info.value, AttestationError) and info.value.reason == "mrenclave"


def test_issuer_with_malformed_extensions_is_a_chain_error(pki, report_data) -> None:
    broken_ca = (
        x509.CertificateBuilder()
        .subject_name(pki.ca.subject)
        .issuer_name(pki.root.subject)
        .public_key(pki.ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.now - dt.timedelta(days=1))
        .not_valid_after(pki.now + dt.timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x01\x02"), critical=True
        )
        .sign(pki.root_key, hashes.SHA256())
    )
    raw = pki.quote(report_data=report_data, chain=pki.pem(pki.pck, broken_ca))
    with pytest.raises(CertificateChainError, match="malformed extensions"):
        verify(pki, raw, report_data)
