"""The files a TLS endpoint needs: found where the layout says, and checked before use."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.pki import (
    Identity,
    PKIError,
    Role,
    TLSFiles,
    create_request,
    init_ca,
    issue,
    tls_files_for,
)


def test_tls_files_for_an_issued_identity(pki_dir: Path) -> None:
    issue(pki_dir, "agg", Role.AGGREGATOR, ["127.0.0.1"])
    files = tls_files_for(pki_dir, "agg")

    assert files == TLSFiles(
        ca=pki_dir / "ca.crt", cert=pki_dir / "agg.crt", key=pki_dir / "agg.key"
    )
    ca, cert, key = files.read()
    assert ca.startswith(b"-----BEGIN CERTIFICATE-----")
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert files.check() == Identity("agg", Role.AGGREGATOR)


def test_missing_ca_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match=r"ca\.crt is missing: .*`bastion pki init --pki-dir"):
        tls_files_for(tmp_path, "alice")


def test_missing_key_names_the_command_that_makes_it(pki_dir: Path) -> None:
    with pytest.raises(PKIError, match=r"alice\.key is missing: run `bastion pki request alice"):
        tls_files_for(pki_dir, "alice")


def test_missing_certificate_says_to_get_it_signed(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    site = tmp_path / "site"
    create_request(site, "alice", Role.COLLABORATOR)
    (site / "ca.crt").write_bytes((tmp_path / "ca" / "ca.crt").read_bytes())
    with pytest.raises(PKIError, match=r"alice\.crt is missing: send .*alice\.csr to the CA.*sign"):
        tls_files_for(site, "alice")


def test_invalid_name_is_refused_before_looking_for_files(pki_dir: Path) -> None:
    with pytest.raises(PKIError, match="invalid identity name"):
        tls_files_for(pki_dir, "../ca")


def test_check_catches_a_key_that_does_not_belong_to_the_certificate(pki_dir: Path) -> None:
    issue(pki_dir, "alice", Role.COLLABORATOR)
    issue(pki_dir, "bob", Role.COLLABORATOR)
    files = TLSFiles(ca=pki_dir / "ca.crt", cert=pki_dir / "alice.crt", key=pki_dir / "bob.key")
    with pytest.raises(PKIError, match=r"bob\.key does not belong to certificate .*alice\.crt"):
        files.check()


def test_check_catches_a_certificate_from_another_ca(pki_dir: Path, tmp_path: Path) -> None:
    issue(pki_dir, "alice", Role.COLLABORATOR)
    init_ca(tmp_path / "other")
    files = TLSFiles(
        ca=tmp_path / "other" / "ca.crt", cert=pki_dir / "alice.crt", key=pki_dir / "alice.key"
    )
    with pytest.raises(PKIError, match=r"alice\.crt is not signed by this CA \(.*other/ca\.crt"):
        files.check()
