"""The round observer that writes the audit log, and the rollback check at start.

It records what the federation accepted and produced: plan and workspace measurement,
every attestation verdict (hash of its evidence record), every accepted or rejected
result (with the update's digest), each round's resulting model digest and checkpoint
digest, and each revocation list the aggregator loaded. For every accepted training
update it appends a *receipt* naming the round, the update's digest and the resulting
model's digest; the site receives that signed record with its next task request. Each
checkpoint records the log's head (``checkpoint_fields``); ``bastion.audit.rollback``
checks it at start.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion.aggregator.events import (
    AttestationVerdict,
    Checkpointed,
    FederationFinished,
    ResultAccepted,
    ResultRejected,
    RoundClosed,
    RoundEvent,
    RoundObserver,
    RoundRestarted,
    RoundStarted,
    TaskFailed,
)
from bastion.audit.log import AuditLog, Signer, canonical
from bastion.audit.rollback import HASH, SEQ, check_rollback
from bastion.pki.layout import TLSFiles
from bastion.plan import Plan
from bastion.storage.checkpoints import CheckpointStore


def _digest_of(value: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


class AuditObserver(RoundObserver):
    """Writes the federation's audit log and hands out receipts."""

    def __init__(self, log: AuditLog, started: Mapping[str, Any]) -> None:
        self.log = log
        self._updates: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
        self._receipts: dict[str, list[bytes]] = defaultdict(list)
        self.log.append("federation_started", dict(started))

    # ------------------------------------------------------------------ hooks

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, RoundStarted):
            self.log.append(
                "round_started",
                {"round": event.round, "collaborators": sorted(event.collaborators)},
            )
        elif isinstance(event, ResultAccepted):
            self.log.append(
                "result_accepted",
                {
                    "round": event.round,
                    "collaborator": event.collaborator,
                    "task": event.task,
                    "kind": event.kind,
                    "examples": event.example_count,
                    "update_blake3": event.update_digest,
                },
            )
            if event.kind == "train" and event.update_digest:
                self._updates[event.round].append(
                    (event.collaborator, event.task, event.update_digest)
                )
        elif isinstance(event, RoundRestarted):
            # The first try's updates are discarded with it: no receipt may name them.
            self._updates.pop(event.round, None)
            self.log.append("round_restarted", {"round": event.round, "late": sorted(event.late)})
        elif isinstance(event, ResultRejected):
            self.log.append(
                "result_rejected",
                {
                    "round": event.round,
                    "collaborator": event.collaborator,
                    "task": event.task,
                    "reason": event.reason[:500],
                },
            )
        elif isinstance(event, TaskFailed):
            self.log.append(
                "task_failed",
                {"round": event.round, "collaborator": event.collaborator, "task": event.task},
            )
        elif isinstance(event, AttestationVerdict):
            verdict = json.loads(json.dumps(dict(event.verdict), default=str))
            self.log.append(
                "attestation",
                {
                    "collaborator": event.collaborator,
                    "accepted": bool(verdict.get("accepted", False)),
                    "evidence_sha256": str(verdict.get("evidence_sha256", "")),
                    "verdict_sha256": _digest_of(verdict),
                },
            )
        elif isinstance(event, RoundClosed):
            number = event.progress.number
            accepted = self._updates.pop(number, [])
            closed = {
                "round": number,
                "round_completed": event.round_completed,
                "accepted": [
                    {"collaborator": c, "task": t, "update_blake3": d} for c, t, d in accepted
                ],
                "timed_out": sorted(event.timed_out),
                "model_blake3": event.model_digest,
            }
            receipts = [
                {
                    "round": number,
                    "collaborator": collaborator,
                    "task": task,
                    "update_blake3": digest,
                    "model_blake3": event.model_digest,
                }
                for collaborator, task, digest in accepted
            ]
            written = self.log.append_all(
                [("round_closed", closed), *(("receipt", receipt) for receipt in receipts)]
            )
            for receipt in written[1:]:
                self._receipts[receipt["data"]["collaborator"]].append(canonical(receipt))
        elif isinstance(event, Checkpointed):
            self.log.append(
                "checkpoint",
                {
                    "round": event.round_completed,
                    "finished": event.finished,
                    "sha256": event.sha256,
                },
            )
        elif isinstance(event, FederationFinished):
            self.log.append("federation_finished", {"rounds": event.rounds})

    def checkpoint_fields(self) -> dict[str, str]:
        head = self.log.head
        return {SEQ: str(head.seq), HASH: head.hash}

    def messages_for(self, collaborator: str) -> tuple[bytes, ...]:
        """The signed receipts ``collaborator`` has not been handed yet."""
        return tuple(self._receipts.pop(collaborator, ()))

    def revocation_list(self, digest: str, revoked: dict[int, str]) -> None:
        """A revocation list the aggregator enforces from now on (each revocation logged)."""
        if not digest:
            return
        self.log.append(
            "revocation_list",
            {
                "crl_sha256": digest,
                "revoked": [{"serial": f"{s:X}", "reason": r} for s, r in sorted(revoked.items())],
            },
        )


AUDIT_FILE = "audit.jsonl"


def audit_observer(plan: Plan, workspace: Path, tls: TLSFiles, measurement: str) -> AuditObserver:
    """The aggregator's audit log (``logs/audit.jsonl``), signed with its TLS key, after the
    rollback check of the checkpoint it resumes from."""
    checkpoints = workspace / plan.output.checkpoints
    path = workspace / plan.output.logs / AUDIT_FILE
    state = CheckpointStore(checkpoints, plan.canonical_hash()).load().state
    check_rollback(path, state)
    log = AuditLog(path, Signer.from_files(tls.cert, tls.key))
    started = {
        "plan_sha256": plan.canonical_hash(),
        "workspace_measurement": measurement,
        "resumed_round": state.round_completed,
    }
    return AuditObserver(log, started)
