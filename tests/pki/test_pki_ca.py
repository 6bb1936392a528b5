"""The CA: what init_ca writes, and that it never silently replaces an existing CA."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.pki import (
    PKIError,
    Role,
    init_ca,
    issue,
    list_issued,
    load_ca,
    load_certificate,
    verify_issued_by,
)


def test_init_ca_writes_a_self_signed_ca_restricted_to_leaf_certificates(tmp_path: Path) -> None:
    path = init_ca(tmp_path / "pki", common_name="Test Federation", days=30)

    cert = load_certificate(path)
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=Test Federation"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    cert.verify_directly_issued_by(cert)  # self-signature is valid


def test_ca_key_is_private_and_registry_starts_empty(tmp_path: Path) -> None:
    init_ca(tmp_path / "pki")
    assert stat.S_IMODE((tmp_path / "pki" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    assert json.loads((tmp_path / "pki" / "issued.json").read_text())["issued"] == []
    assert list_issued(tmp_path / "pki") == []


def test_init_ca_refuses_to_overwrite_an_existing_ca(pki_dir: Path) -> None:
    before = (pki_dir / "ca.key").read_bytes()
    with pytest.raises(PKIError, match="a CA already exists in .*--force"):
        init_ca(pki_dir)
    assert (pki_dir / "ca.key").read_bytes() == before


def test_init_ca_refuses_when_only_the_key_is_left(tmp_path: Path) -> None:
    init_ca(tmp_path)
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(PKIError, match="already exists"):
        init_ca(tmp_path)


def test_forced_reinit_voids_old_certificates_and_resets_the_registry(pki_dir: Path) -> None:
    old = issue(pki_dir, "alice", Role.COLLABORATOR)
    init_ca(pki_dir, force=True)

    assert list_issued(pki_dir) == []
    with pytest.raises(PKIError, match="not signed by this CA"):
        verify_issued_by(old.path, pki_dir / "ca.crt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"common_name": ""}, "1-64 characters"), ({"days": 0}, "at least 1 day")],
)
def test_init_ca_rejects_bad_parameters(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(PKIError, match=message):
        init_ca(tmp_path, **kwargs)
    assert not (tmp_path / "ca.key").exists()


def test_load_ca_explains_a_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match=r"ca\.crt does not exist: run `bastion pki init"):
        load_ca(tmp_path)


def test_load_ca_refuses_a_key_that_is_not_the_cas(tmp_path: Path) -> None:
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(PKIError, match="does not belong to"):
        load_ca(tmp_path / "a")
