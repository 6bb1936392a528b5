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


def test_records_appended_together_are_chained_in_order_and_verify(tmp_path: Path) -> None:
    """A round's close writes its receipts with one fsync; they must read as if appended
    one by one."""
    pki = issue_identities(tmp_path, ["site-1"])
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, _signer(pki))
    log.append("a", {"n": 1})
    written = log.append_all([("b", {"n": 2}), ("c", {"n": 3}), ("d", {"n": 4})])
    assert [r["kind"] for r in written] == ["b", "c", "d"]
    assert log.head.seq == written[-1]["seq"] == 5
    records = verify_log(path, pki / "ca.crt").records
    assert [r["kind"] for r in records] == ["signer", "a", "b", "c", "d"]
    assert records[2:] == written
    assert AuditLog(path, _signer(pki)).head == log.head  # a restart resumes the same chain


def test_the_first_batch_of_a_new_log_introduces_its_signer(tmp_path: Path) -> None:
    pki = issue_identities(tmp_path, ["site-1"])
    path = tmp_path / "audit.jsonl"
    written = AuditLog(path, _signer(pki)).append_all([("a", {}), ("b", {})])
    assert [r["kind"] for r in written] == ["a", "b"]
    assert [r["kind"] for r in verify_log(path, pki / "ca.crt").records] == ["signer", "a", "b"]


def test_appending_nothing_writes_nothing(tmp_path: Path) -> None:
    pki = issue_identities(tmp_path, ["site-1"])
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, _signer(pki))
    log.append("a", {})
    size = path.stat().st_size
    assert log.append_all([]) == []
    assert path.stat().st_size == size
