"""Rollback-proof state: a checkpoint must not be older than the audit log says.

Each checkpoint records the audit log's head (``audit.seq``, ``audit.hash``) when it was
written. At start the aggregator refuses a checkpoint older than the log's last
checkpointed round (a host restored an old checkpoint to replay rounds), and a log that
no longer holds the checkpoint's head record (truncated or replaced).
"""

from __future__ import annotations

from pathlib import Path

from bastion.audit.log import AuditError, body_hash, read_records
from bastion.storage.checkpoints import RoundState

SEQ = "audit.seq"
HASH = "audit.hash"


def check_rollback(log_path: Path, state: RoundState) -> None:
    """Refuse a checkpoint older than the log (a restored one), or a truncated log."""
    if not log_path.exists():
        if state.anchors.get(SEQ):
            raise AuditError(
                f"the checkpoint belongs to audit record {state.anchors[SEQ]} but {log_path} "
                "is gone: the audit log was deleted"
            )
        return
    records = {int(r["seq"]): r for _, r in read_records(log_path)}
    last_checkpoint = max(
        (int(r["data"]["round"]) for r in records.values() if r["kind"] == "checkpoint"),
        default=0,
    )
    if state.round_completed < last_checkpoint:
        raise AuditError(
            f"the checkpoint is of round {state.round_completed}, but the audit log shows "
            f"round {last_checkpoint} was checkpointed: an older checkpoint was restored; "
            "refusing to replay rounds"
        )
    anchored = state.anchors.get(SEQ)
    if anchored is None:
        if state.round_completed:
            raise AuditError("the checkpoint records no audit-log head; refusing to resume")
        return
    record = records.get(int(anchored))
    if record is None:
        raise AuditError(
            f"the checkpoint belongs to audit record {anchored}, but {log_path} ends at "
            f"{max(records, default=0)}: the audit log was truncated"
        )
    if body_hash(record) != state.anchors.get(HASH):
        raise AuditError(f"audit record {anchored} is not the one the checkpoint belongs to")
