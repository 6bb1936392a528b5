"""issued.json: every signed certificate is recorded, with what the operator needs to see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.pki import (
    PKIError,
    Role,
    certificate_fingerprint,
    init_ca,
    issue,
    list_issued,
    load_certificate,
)


def test_issue_records_name_role_serial_expiry_and_fingerprint(pki_dir: Path) -> None:
    entry = issue(pki_dir, "alice", Role.COLLABORATOR, days=30)
    cert = load_certificate(pki_dir / "alice.crt")

    document = json.loads((pki_dir / "issued.json").read_text())
    assert document["ca_sha256"] == certificate_fingerprint(load_certificate(pki_dir / "ca.crt"))
    assert document["issued"] == [
        {
            "name": "alice",
            "role": "collaborator",
            "serial": f"{cert.serial_number:X}",
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": certificate_fingerprint(cert),
            "certificate": "alice.crt",
        }
    ]
    assert list_issued(pki_dir) == [entry]


def test_list_issued_keeps_issue_order(pki_dir: Path) -> None:
    issue(pki_dir, "agg", Role.AGGREGATOR, ["127.0.0.1"])
    issue(pki_dir, "alice", Role.COLLABORATOR)
    issue(pki_dir, "owner", Role.MODEL_OWNER)
    assert [(e.name, e.role) for e in list_issued(pki_dir)] == [
        ("agg", Role.AGGREGATOR),
        ("alice", Role.COLLABORATOR),
        ("owner", Role.MODEL_OWNER),
    ]


def test_list_issued_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match=r"no CA in .*: run `bastion pki init --pki-dir"):
        list_issued(tmp_path)


def test_corrupt_registry_is_reported_not_ignored(pki_dir: Path) -> None:
    (pki_dir / "issued.json").write_text("{not json")
    with pytest.raises(PKIError, match=r"registry .*issued\.json is corrupt"):
        list_issued(pki_dir)


def test_registry_of_a_replaced_ca_is_detected(pki_dir: Path, tmp_path: Path) -> None:
    issue(pki_dir, "alice", Role.COLLABORATOR)
    init_ca(tmp_path / "other")
    (pki_dir / "ca.crt").write_bytes((tmp_path / "other" / "ca.crt").read_bytes())
    with pytest.raises(PKIError, match="belongs to a different CA"):
        list_issued(pki_dir)
