"""Signing at the CA: the request's key, name and hosts are kept; everything else is the
CA's decision, and a request that is tampered with or asks for too much is refused."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.pki import (
    PKIError,
    Role,
    create_request,
    csr_fingerprint,
    identity_of,
    init_ca,
    issue,
    list_issued,
    load_certificate,
    load_csr,
    load_private_key,
    sign_request,
    verify_issued_by,
)


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_request_and_sign_round_trip_across_two_directories(tmp_path: Path) -> None:
    ca_dir, site_dir = tmp_path / "ca", tmp_path / "site"
    init_ca(ca_dir)
    csr_path = create_request(site_dir, "agg", Role.AGGREGATOR, ["127.0.0.1", "agg.local"])

    entry = sign_request(ca_dir, csr_path, Role.AGGREGATOR)

    assert entry.path == ca_dir / "agg.crt"
    assert not (ca_dir / "agg.key").exists()  # the key never left the site
    cert = load_certificate(entry.path)
    assert cert.subject.rfc4514_string() == "OU=aggregator,CN=agg"
    assert cert.public_key() == load_private_key(site_dir / "agg.key").public_key()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["agg.local"]
    assert _ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    verify_issued_by(cert, ca_dir / "ca.crt")
    assert entry.serial == cert.serial_number


@pytest.mark.parametrize(
    ("role", "ekus"),
    [
        (Role.COLLABORATOR, {ExtendedKeyUsageOID.CLIENT_AUTH}),
        (Role.MODEL_OWNER, {ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_each_role_gets_its_own_extended_key_usage(
    pki_dir: Path, role: Role, ekus: set[x509.ObjectIdentifier]
) -> None:
    cert = load_certificate(issue(pki_dir, "member", role).path)
    assert _ekus(cert) == ekus
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        role.value
    )


def test_leaf_certificates_cannot_sign_certificates(pki_dir: Path) -> None:
    cert = load_certificate(issue(pki_dir, "alice", Role.COLLABORATOR).path)
    ca = load_certificate(pki_dir / "ca.crt")

    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def test_tampered_request_is_refused(pki_dir: Path, tmp_path: Path) -> None:
    csr_path = create_request(tmp_path / "site", "alice", Role.COLLABORATOR)
    pem = csr_path.read_text().splitlines()
    # Flip one base64 character inside the signed body (not the trailing signature).
    line = pem[2]
    pem[2] = line[:10] + ("A" if line[10] != "A" else "B") + line[11:]
    csr_path.write_text("\n".join(pem) + "\n")

    with pytest.raises(PKIError, match=r"alice\.csr (has an invalid signature|is not a PEM)"):
        sign_request(pki_dir, csr_path, Role.COLLABORATOR)
    assert not (pki_dir / "alice.crt").exists()


def test_request_with_a_swapped_subject_fails_the_signature_check(
    pki_dir: Path, tmp_path: Path
) -> None:
    """A man in the middle rewrites CN in the DER; the requester's signature then fails."""
    csr_path = create_request(tmp_path / "site", "alice", Role.COLLABORATOR)
    der = load_csr(csr_path).public_bytes(serialization.Encoding.DER)
    forged = x509.load_der_x509_csr(der.replace(b"alice", b"bobby"))
    assert forged.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bobby"
    forged_path = tmp_path / "bobby.csr"
    forged_path.write_bytes(forged.public_bytes(serialization.Encoding.PEM))

    with pytest.raises(PKIError, match="invalid signature.*altered"):
        sign_request(pki_dir, forged_path, Role.COLLABORATOR)


def test_role_given_at_signing_must_match_the_role_requested(pki_dir: Path, tmp_path: Path) -> None:
    csr_path = create_request(tmp_path / "site", "alice", Role.COLLABORATOR, ["10.1.1.1"])
    with pytest.raises(
        PKIError, match="asks for role 'collaborator' but is being signed as 'aggregator'"
    ):
        sign_request(pki_dir, csr_path, Role.AGGREGATOR)
    assert list_issued(pki_dir) == []


def test_request_without_a_role_gets_the_role_of_the_signer(
    pki_dir: Path, tmp_path: Path, write_csr, subject
) -> None:
    csr_path = write_csr(tmp_path / "owner.csr", subject("owner"))
    entry = sign_request(pki_dir, csr_path, "model-owner")
    assert identity_of(entry.path).role is Role.MODEL_OWNER


def test_subject_attributes_beyond_name_and_role_are_not_copied(
    pki_dir: Path, tmp_path: Path, write_csr, subject
) -> None:
    attrs = [*subject("alice"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp")]
    entry = sign_request(pki_dir, write_csr(tmp_path / "a.csr", attrs), Role.COLLABORATOR)
    assert load_certificate(entry.path).subject.rfc4514_string() == "OU=collaborator,CN=alice"


def test_aggregator_request_without_hosts_is_refused_at_signing(
    pki_dir: Path, tmp_path: Path, write_csr, subject
) -> None:
    csr_path = write_csr(tmp_path / "agg.csr", subject("agg", "aggregator"))
    with pytest.raises(PKIError, match=r"needs at least one host.*--host 127\.0\.0\.1"):
        sign_request(pki_dir, csr_path, Role.AGGREGATOR)


def test_non_host_sans_are_refused(pki_dir: Path, tmp_path: Path, write_csr, subject) -> None:
    csr_path = write_csr(
        tmp_path / "a.csr", subject("alice"), sans=[x509.RFC822Name("alice@example.org")]
    )
    with pytest.raises(PKIError, match="not a DNS name or IP address"):
        sign_request(pki_dir, csr_path, Role.COLLABORATOR)


def test_wildcard_dns_san_in_a_foreign_request_is_refused(
    pki_dir: Path, tmp_path: Path, write_csr, subject
) -> None:
    csr_path = write_csr(tmp_path / "a.csr", subject("agg"), sans=[x509.DNSName("*.example.org")])
    with pytest.raises(PKIError, match="invalid host '\\*.example.org'"):
        sign_request(pki_dir, csr_path, Role.AGGREGATOR)


def test_invalid_cn_in_a_foreign_request_is_refused(
    pki_dir: Path, tmp_path: Path, write_csr, subject
) -> None:
    with pytest.raises(PKIError, match="invalid identity name '../ca'"):
        sign_request(pki_dir, write_csr(tmp_path / "a.csr", subject("../ca")), Role.COLLABORATOR)


@pytest.mark.parametrize(
    "key",
    [rsa.generate_private_key(65537, 1024), ec.generate_private_key(ec.SECP256K1())],
    ids=["rsa-1024", "secp256k1"],
)
def test_weak_or_unsupported_keys_are_refused(
    pki_dir: Path, tmp_path: Path, write_csr, subject, key: object
) -> None:
    csr_path = write_csr(tmp_path / "a.csr", subject("alice"), key=key)
    with pytest.raises(PKIError, match="too weak or unsupported"):
        sign_request(pki_dir, csr_path, Role.COLLABORATOR)


def test_rsa_2048_requests_are_accepted(pki_dir: Path, tmp_path: Path, write_csr, subject) -> None:
    key = rsa.generate_private_key(65537, 2048)
    entry = sign_request(
        pki_dir, write_csr(tmp_path / "a.csr", subject("alice"), key=key), Role.COLLABORATOR
    )
    assert (
        load_certificate(entry.path)
        .extensions.get_extension_for_class(x509.KeyUsage)
        .value.key_encipherment
    )


def test_expected_fingerprint_must_match(pki_dir: Path, tmp_path: Path) -> None:
    csr_path = create_request(tmp_path / "site", "alice", Role.COLLABORATOR)
    other = csr_fingerprint(create_request(tmp_path / "other", "alice", Role.COLLABORATOR))

    with pytest.raises(PKIError, match="not the request the requester made. Do not sign"):
        sign_request(pki_dir, csr_path, Role.COLLABORATOR, expected_fingerprint=other)
    typed = csr_fingerprint(csr_path).replace(":", " ").lower()
    assert sign_request(pki_dir, csr_path, Role.COLLABORATOR, expected_fingerprint=typed)


def test_a_name_keeps_its_role(pki_dir: Path, tmp_path: Path) -> None:
    issue(pki_dir, "alice", Role.COLLABORATOR)
    csr_path = create_request(tmp_path / "evil", "alice", Role.AGGREGATOR, ["10.0.0.1"])
    with pytest.raises(PKIError, match="'alice' already holds a collaborator certificate"):
        sign_request(pki_dir, csr_path, Role.AGGREGATOR)


def test_renewal_with_the_same_role_is_recorded(pki_dir: Path) -> None:
    first = issue(pki_dir, "alice", Role.COLLABORATOR)
    second = sign_request(pki_dir, pki_dir / "alice.csr", Role.COLLABORATOR, days=30)
    assert [entry.serial for entry in list_issued(pki_dir)] == [first.serial, second.serial]
    assert load_certificate(pki_dir / "alice.crt").serial_number == second.serial


def test_certificate_may_not_outlive_the_ca(tmp_path: Path) -> None:
    init_ca(tmp_path, days=30)
    with pytest.raises(PKIError, match="would outlive the CA, which expires on 20"):
        issue(tmp_path, "alice", Role.COLLABORATOR, days=365)
    assert not (tmp_path / "alice.key").exists()  # nothing half-made: a retry just works
    assert issue(tmp_path, "alice", Role.COLLABORATOR, days=29)


def test_validity_window_follows_not_before_and_days(pki_dir: Path) -> None:
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    entry = issue(pki_dir, "old", Role.COLLABORATOR, days=10, not_before=start)
    cert = load_certificate(entry.path)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + timedelta(days=10)
    assert entry.not_after == start + timedelta(days=10)


def test_issue_without_a_ca_makes_no_key(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="bastion pki init"):
        issue(tmp_path, "alice", Role.COLLABORATOR)
    assert not (tmp_path / "alice.key").exists()


def test_zero_days_is_refused_before_a_key_is_made(pki_dir: Path) -> None:
    with pytest.raises(PKIError, match="at least 1 day"):
        issue(pki_dir, "alice", Role.COLLABORATOR, days=0)
    assert not (pki_dir / "alice.key").exists()
