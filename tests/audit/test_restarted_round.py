"""A round restarted for want of a quorum gets no receipt for the updates it discarded.

Found reading the audit observer while tracing the partition scenario's restarted rounds:
the updates accepted in a round's first try stayed listed, so its ``round_closed`` record
named them and each of their sites got a signed receipt for a model they are not in.
"""

from __future__ import annotations

import json
from pathlib import Path

from support.workspaces import issue_identities

from bastion.aggregator.audit_observer import AuditObserver
from bastion.aggregator.events import ResultAccepted, RoundClosed, RoundRestarted
from bastion.aggregator.records import RoundProgress
from bastion.audit.log import AuditLog, Signer, verify_log


def _accepted(site: str, digest: str) -> ResultAccepted:
    return ResultAccepted(1, site, "train", "train", 10, {}, update_digest=digest)


def test_receipts_name_only_the_updates_of_the_try_that_closed(tmp_path: Path) -> None:
    pki = issue_identities(tmp_path, ["site-1", "site-2"])
    signer = Signer.from_files(pki / "aggregator.crt", pki / "aggregator.key")
    observer = AuditObserver(AuditLog(tmp_path / "audit.jsonl", signer), {})
    observer.notify(_accepted("site-1", "a" * 64))
    observer.notify(RoundRestarted(1, ("site-2",)))
    observer.notify(_accepted("site-2", "b" * 64))
    progress = RoundProgress(1, False, {}, {}, 0.0)
    observer.notify(RoundClosed(progress, 1, {}, 1, (), 1.0, model_digest="c" * 64))

    assert observer.messages_for("site-1") == ()
    (receipt,) = observer.messages_for("site-2")
    assert json.loads(receipt)["data"]["update_blake3"] == "b" * 64
    records = verify_log(tmp_path / "audit.jsonl", pki / "ca.crt").records
    closed = next(r for r in records if r["kind"] == "round_closed")
    assert [u["collaborator"] for u in closed["data"]["accepted"]] == ["site-2"]
