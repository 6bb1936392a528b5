"""Trusting a certificate: issued by our CA, inside its validity window, and naming a
member and a role that its extended key usage agrees with."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from bastion.pki import (
    Identity,
    PKIError,
    Role,
    identity_of,
    init_ca,
    issue,
    load_certificate,
    load_private_key,
    parse_certificate,
    verify_identity,
    verify_issued_by,
)


def test_identity_of_reads_name_and_role(pki_dir: Path) -> None:
    agg = issue(pki_dir, "agg.main", Role.AGGREGATOR, ["127.0.0.1"])
    alice = issue(pki_dir, "alice", Role.COLLABORATOR)
    owner = issue(pki_dir, "owner_1", Role.MODEL_OWNER)

    assert identity_of(agg.path) == Identity("agg.main", Role.AGGREGATOR)
    assert identity_of(load_certificate(alice.path)) == Identity("alice", Role.COLLABORATOR)
    assert identity_of(str(owner.path)) == Identity("owner_1", Role.MODEL_OWNER)
    assert str(identity_of(alice.path)) == "alice (collaborator)"


def test_identity_of_reads_a_grpc_peer_certificate_from_pem_bytes(pki_dir: Path) -> None:
    alice = issue(pki_dir, "alice", Role.COLLABORATOR)
    pem = alice.path.read_bytes()
    assert identity_of(parse_certificate(pem, "peer")) == Identity("alice", Role.COLLABORATOR)
    with pytest.raises(PKIError, match="peer is not a PEM certificate"):
        parse_certificate(b"garbage", "peer")


def test_certificate_of_another_ca_is_rejected(pki_dir: Path, tmp_path: Path) -> None:
    init_ca(tmp_path / "foreign", common_name="Foreign CA")
    intruder = issue(tmp_path / "foreign", "alice", Role.COLLABORATOR)

    with pytest.raises(PKIError, match=r"alice\.crt is not signed by this CA .*Foreign CA"):
        verify_issued_by(intruder.path, pki_dir / "ca.crt")
    with pytest.raises(PKIError, match="not signed by this CA"):
        verify_identity(intruder.path, pki_dir / "ca.crt", Role.COLLABORATOR)


def test_same_named_foreign_ca_is_still_rejected(pki_dir: Path, tmp_path: Path) -> None:
    """Same issuer name, different key: only the signature can tell them apart."""
    init_ca(tmp_path / "twin")
    intruder = issue(tmp_path / "twin", "alice", Role.COLLABORATOR)
    with pytest.raises(PKIError, match="not signed by this CA"):
        verify_issued_by(intruder.path, pki_dir / "ca.crt")


def test_expired_certificate_names_its_expiry_date(pki_dir: Path) -> None:
    start = datetime.now(timezone.utc) - timedelta(days=10)
    old = issue(pki_dir, "alice", Role.COLLABORATOR, days=2, not_before=start)
    expiry = (start + timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S UTC")

    with pytest.raises(PKIError, match=rf"alice\.crt expired on {expiry}"):
        verify_issued_by(old.path, pki_dir / "ca.crt")


def test_certificate_not_yet_valid_is_rejected(pki_dir: Path) -> None:
    later = issue(
        pki_dir,
        "alice",
        Role.COLLABORATOR,
        days=5,
        not_before=datetime.now(timezone.utc) + timedelta(days=1),
    )
    with pytest.raises(PKIError, match="not valid yet.*clock"):
        verify_issued_by(later.path, pki_dir / "ca.crt")


def test_validity_is_checked_at_the_given_moment(pki_dir: Path) -> None:
    entry = issue(pki_dir, "alice", Role.COLLABORATOR, days=30)
    verify_issued_by(entry.path, pki_dir / "ca.crt")
    with pytest.raises(PKIError, match="expired on"):
        verify_issued_by(entry.path, pki_dir / "ca.crt", at=entry.not_after + timedelta(seconds=1))


def test_a_member_certificate_cannot_act_as_a_ca(pki_dir: Path) -> None:
    alice = issue(pki_dir, "alice", Role.COLLABORATOR)
    bob = issue(pki_dir, "bob", Role.COLLABORATOR)
    with pytest.raises(PKIError, match="is not a CA certificate"):
        verify_issued_by(bob.path, alice.path)


def test_verify_identity_enforces_the_role(pki_dir: Path) -> None:
    alice = issue(pki_dir, "alice", Role.COLLABORATOR)
    ca = pki_dir / "ca.crt"
    assert verify_identity(alice.path, ca, "collaborator") == Identity("alice", Role.COLLABORATOR)
    assert verify_identity(alice.path, ca, [Role.AGGREGATOR, Role.COLLABORATOR]).name == "alice"
    assert verify_identity(alice.path, ca).role is Role.COLLABORATOR
    with pytest.raises(
        PKIError, match=r"belongs to alice \(collaborator\), but a model-owner certificate"
    ):
        verify_identity(alice.path, ca, Role.MODEL_OWNER)


def test_role_in_ou_must_agree_with_extended_key_usage(forge_cert, subject) -> None:
    forged = forge_cert(
        subject("alice", "collaborator"),
        ekus=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    with pytest.raises(PKIError, match="says role 'collaborator'.*that of the aggregator role"):
        identity_of(forged)


@pytest.mark.parametrize(
    ("cn", "ou", "ekus", "message"),
    [
        ("alice", None, [ExtendedKeyUsageOID.CLIENT_AUTH], r"has no organizational unit"),
        ("alice", "admin", [ExtendedKeyUsageOID.CLIENT_AUTH], r"OU is not a Bastion role"),
        ("alice", "collaborator", None, "has no extended key usage"),
        ("../x", "collaborator", [ExtendedKeyUsageOID.CLIENT_AUTH], "invalid identity name"),
        ("alice", "collaborator", [ExtendedKeyUsageOID.EMAIL_PROTECTION], "no Bastion role"),
    ],
)
def test_certificates_bastion_never_issues_are_refused(
    forge_cert, subject, cn: str, ou: str | None, ekus: list | None, message: str
) -> None:
    with pytest.raises(PKIError, match=message):
        identity_of(forge_cert(subject(cn, ou), ekus=ekus))


def test_ca_certificate_is_not_an_identity(pki_dir: Path, forge_cert, subject) -> None:
    with pytest.raises(PKIError, match="is a CA certificate"):
        identity_of(pki_dir / "ca.crt")
    with pytest.raises(PKIError, match="is a CA certificate"):
        identity_of(forge_cert(subject("alice", "collaborator"), ca_flag=True))


def test_loading_errors_name_the_file_and_the_problem(pki_dir: Path, tmp_path: Path) -> None:
    issue(pki_dir, "alice", Role.COLLABORATOR)
    with pytest.raises(PKIError, match=r"certificate .*nobody\.crt does not exist"):
        load_certificate(tmp_path / "nobody.crt")
    (tmp_path / "junk.crt").write_text("hello")
    with pytest.raises(PKIError, match=r"junk\.crt is not a PEM certificate: it holds no PEM"):
        load_certificate(tmp_path / "junk.crt")
    with pytest.raises(
        PKIError,
        match=r"alice\.csr is not a PEM certificate: it holds a "
        "CERTIFICATE REQUEST block",
    ):
        load_certificate(pki_dir / "alice.csr")
    with pytest.raises(PKIError, match=r"alice\.crt is not a PEM private key"):
        load_private_key(pki_dir / "alice.crt", check_permissions=False)
    with pytest.raises(PKIError, match="is a directory"):
        load_certificate(pki_dir)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_private_key_readable_by_others_is_refused(pki_dir: Path) -> None:
    issue(pki_dir, "alice", Role.COLLABORATOR)
    key_path = pki_dir / "alice.key"
    key_path.chmod(0o644)
    with pytest.raises(PKIError, match=r"accessible by other users \(mode 0644\).*chmod 600"):
        load_private_key(key_path)
    assert load_private_key(key_path, check_permissions=False)
    key_path.chmod(0o600)
    assert load_private_key(key_path)


def test_encrypted_private_key_is_explained(pki_dir: Path) -> None:
    issue(pki_dir, "alice", Role.COLLABORATOR)
    key_path = pki_dir / "alice.key"
    key = load_private_key(key_path)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(PKIError, match="is encrypted: Bastion needs an unencrypted key"):
        load_private_key(key_path)
    assert load_private_key(key_path, password=b"secret")
