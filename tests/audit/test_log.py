"""The audit log's own guarantees, without a federation."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.workspaces import issue_identities

from bastion.audit.log import AuditError, AuditLog, Signer, verify_log
from bastion.pki import Role, issue


def _signer(pki: Path, name: str = "aggregator") -> Signer:
    return Signer.from_files(pki / f"{name}.crt", pki / f"{name}.key")


def test_a_torn_last_line_is_cut_and_the_log_goes_on(tmp_path: Path) -> None:
    pki = issue_identities(tmp_path, ["site-1"])
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, _signer(pki))
    log.append("a", {"n": 1})
    with path.open("ab") as handle:
        handle.write(b'{"seq":3,"kind":"tor')  # a crash inside an append
    with pytest.raises(AuditError, match="torn"):
        verify_log(path, pki / "ca.crt")
    again = AuditLog(path, _signer(pki))
    again.append("b", {"n": 2})
    assert [r["kind"] for r in verify_log(path, pki / "ca.crt").records] == ["signer", "a", "b"]


def test_a_record_signed_by_a_collaborator_key_is_refused(tmp_path: Path) -> None:
    pki = issue_identities(tmp_path, ["site-1"])
    path = tmp_path / "audit.jsonl"
    AuditLog(path, _signer(pki, "site-1")).append("a", {})
    with pytest.raises(AuditError, match="signer certificate refused"):
        verify_log(path, pki / "ca.crt")


def test_a_renewed_aggregator_key_is_introduced_in_the_log(tmp_path: Path) -> None:
    pki = issue_identities(tmp_path, ["site-1"])
    path = tmp_path / "audit.jsonl"
    AuditLog(path, _signer(pki)).append("a", {})
    (pki / "aggregator.key").unlink()
    issue(pki, "aggregator", Role.AGGREGATOR, hosts=["127.0.0.1"])  # a new key
    AuditLog(path, _signer(pki)).append("b", {})
    verified = verify_log(path, pki / "ca.crt", aggregator="aggregator")
    assert [r["kind"] for r in verified.records] == ["signer", "a", "signer", "b"]
