"""The signed audit log of a real federation (aggregator and sites as processes over mTLS):
it verifies, every site's receipts are in it, and tampering, deletion, truncation and a
restored older checkpoint are all caught (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import run_bastion
from support.workspaces import make_workspace

from bastion.audit.log import AuditError, body_hash, read_records, verify_log
from bastion.audit.rollback import HASH, SEQ
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import RoundState, load_checkpoint, save_checkpoint

SITES = ("site-1", "site-2")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = make_workspace(tmp_path_factory.mktemp("audit"), collaborators=2, rounds=2)
    with LocalFederation(workspace) as running:
        running.start()
        codes = running.wait(timeout=180)
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, running.log_text("aggregator")
    return workspace


def _verify(workspace: Path, log: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_bastion(
        "audit",
        "verify",
        str(log),
        "--ca",
        str(workspace / "pki" / "ca.crt"),
        *extra,
        cwd=workspace,
    )


def test_the_log_verifies_and_every_receipt_is_in_it(federation: Path) -> None:
    log = federation / "logs" / "audit.jsonl"
    receipts = sorted((federation / "logs" / "receipts").glob("*/*.json"))
    # Every training update of every round has its receipt at its site (2 sites x 2 rounds).
    assert {p.parent.name for p in receipts} == set(SITES) and len(receipts) == 4
    args = [arg for path in receipts for arg in ("--receipt", str(path))]
    result = _verify(federation, log, "--aggregator", "aggregator", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout and result.stdout.count("is in the log") == 4
    verified = verify_log(log, federation / "pki" / "ca.crt")
    kinds = [r["kind"] for r in verified.records]
    for kind in (
        "signer",
        "federation_started",
        "round_started",
        "result_accepted",
        "round_closed",
        "receipt",
        "checkpoint",
        "federation_finished",
    ):
        assert kind in kinds, kind
    closed = [r["data"] for r in verified.records if r["kind"] == "round_closed"]
    assert all(len(c["model_blake3"]) == 64 for c in closed)
    receipt = json.loads(receipts[0].read_bytes())
    assert receipt["data"]["model_blake3"] in {c["model_blake3"] for c in closed}
    shown = run_bastion("audit", "show", str(log), "--kind", "receipt", cwd=federation)
    assert shown.returncode == 0 and shown.stdout.count("receipt") == 4


def test_flipping_any_byte_or_deleting_a_line_is_detected(federation: Path, tmp_path: Path) -> None:
    raw = (federation / "logs" / "audit.jsonl").read_bytes()
    ca = federation / "pki" / "ca.crt"
    step = max(1, len(raw) // 97)
    positions = [p for p in range(0, len(raw), step) if raw[p : p + 1] != b"\n"]
    for position in positions:  # about a hundred bytes spread over the whole log
        forged = bytearray(raw)
        forged[position] ^= 0x01
        path = tmp_path / "flipped.jsonl"
        path.write_bytes(bytes(forged))
        with pytest.raises(AuditError):
            verify_log(path, ca)
    lines = raw.splitlines(keepends=True)
    for index in (0, 1, len(lines) // 2, len(lines) - 2):
        path = tmp_path / "deleted.jsonl"
        path.write_bytes(b"".join(lines[:index] + lines[index + 1 :]))
        with pytest.raises(AuditError):
            verify_log(path, ca)
    result = _verify(federation, path)
    assert result.returncode != 0 and "\n" not in result.stderr.strip()


def test_a_truncated_log_loses_the_receipts_after_it(federation: Path, tmp_path: Path) -> None:
    raw = (federation / "logs" / "audit.jsonl").read_bytes().splitlines(keepends=True)
    path = tmp_path / "truncated.jsonl"
    path.write_bytes(b"".join(raw[: len(raw) // 2]))
    last = sorted((federation / "logs" / "receipts").glob("*/*.json"))[-1]
    result = _verify(federation, path, "--receipt", str(last))
    assert result.returncode != 0 and "not in the log" in result.stdout + result.stderr


def test_restoring_an_older_checkpoint_or_truncating_the_log_is_refused_at_start(
    federation: Path, tmp_path: Path
) -> None:
    import shutil

    workspace = tmp_path / "ws"
    shutil.copytree(federation, workspace)
    log = workspace / "logs" / "audit.jsonl"
    records = [r for _, r in read_records(log)]
    first = next(r for r in records if r["kind"] == "checkpoint" and r["data"]["round"] == 1)
    head = records[first["seq"] - 2]  # the head the round-1 checkpoint recorded
    last = workspace / "save" / "last.safetensors"
    model, metadata = load_checkpoint(last)
    older = RoundState(round_completed=1, anchors={SEQ: str(head["seq"]), HASH: body_hash(head)})
    save_checkpoint(last, model, {**metadata, **older.to_metadata()})
    started = run_bastion(
        "aggregator",
        "start",
        "--workspace",
        str(workspace),
        "--port",
        "0",
        cwd=workspace,
        timeout=60,
    )
    assert started.returncode != 0
    assert "an older checkpoint was restored" in started.stdout + started.stderr

    # The genuine final checkpoint with the log cut short: the log was truncated.
    shutil.copy2(federation / "save" / "last.safetensors", last)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[: len(lines) - 3]))
    started = run_bastion(
        "aggregator",
        "start",
        "--workspace",
        str(workspace),
        "--port",
        "0",
        cwd=workspace,
        timeout=60,
    )
    assert started.returncode != 0
    assert "truncated" in started.stdout + started.stderr
