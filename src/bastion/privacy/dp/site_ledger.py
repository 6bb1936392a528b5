"""A site's local DP ledger: what its records have spent under DP-SGD, kept on its own disk.

The Opacus accountant lives in the collaborator process; without this file a restart
(crash, reboot, ``kill -9``, a new ``bastion collaborator start``) would report epsilon
from zero again. The ledger holds the accountant's (noise multiplier, sample rate, steps)
entries as JSON under ``<logs>/local_dp/<collaborator>.json``, rewritten atomically
after every training task and before its update leaves the site.

It is bound to one collaborator and one federation, named by the SHA-256 fingerprint of
the federation's CA certificate (the plan's ``pki_dir/ca.crt``; the plan hash stands in
when a development run has no CA). A ledger of another collaborator or federation is
refused, never reused or dropped silently: if the records are the same, what they spent
there still counts, and only the site's operator can say so by moving the file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BastionError
from bastion.pki import certificate_fingerprint, load_certificate
from bastion.plan import Plan
from bastion.privacy.dp.local import HistoryEntry, check_history
from bastion.storage.atomic import atomic_write_bytes

LEDGER_FORMAT = "bastion-local-dp-ledger/1"
LEDGER_DIR = "local_dp"
_FIELDS = {
    "format",
    "collaborator",
    "federation",
    "plan_sha256",
    "delta",
    "epsilon",
    "history",
    "updated",
}
#: A ledger is a few hundred bytes; anything far larger is not one.
_MAX_BYTES = 1 << 20


class LedgerError(BastionError):
    """The local DP ledger is unreadable, or belongs to another site or federation."""


def ledger_path(workspace: Path, plan: Plan, collaborator: str) -> Path:
    """Where ``collaborator`` keeps its ledger in the workspace (never measured or exported)."""
    return Path(workspace) / plan.output.logs / LEDGER_DIR / f"{collaborator}.json"


def federation_id(workspace: Path, plan: Plan) -> str:
    """The federation a ledger belongs to: its CA's fingerprint, else the plan's hash."""
    ca = Path(workspace) / plan.network.pki_dir / "ca.crt"
    if ca.exists():
        return f"ca-sha256:{certificate_fingerprint(load_certificate(ca))}"
    return f"plan-sha256:{plan.canonical_hash()}"


@dataclass(frozen=True)
class SiteLedger:
    """The ledger file of one collaborator in one federation."""

    path: Path
    collaborator: str
    federation: str

    @classmethod
    def for_workspace(cls, workspace: Path, plan: Plan, collaborator: str) -> SiteLedger:
        return cls(
            ledger_path(workspace, plan, collaborator),
            collaborator,
            federation_id(workspace, plan),
        )

    def load(self) -> list[HistoryEntry]:
        """The saved accountant history; empty when this site has not trained yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(
                f"local DP ledger {self.path} cannot be read: {exc.strerror}"
            ) from None
        try:
            if len(raw) > _MAX_BYTES:
                raise ValueError(f"{len(raw)} bytes, not a ledger")
            document = json.loads(raw.decode("utf-8"))
            if not isinstance(document, dict) or set(document) != _FIELDS:
                raise ValueError(f"expected the fields {', '.join(sorted(_FIELDS))}")
            if document["format"] != LEDGER_FORMAT:
                raise ValueError(f"format {document['format']!r}, expected {LEDGER_FORMAT!r}")
            if not all(isinstance(document[k], str) for k in ("collaborator", "federation")):
                raise ValueError("collaborator and federation must be text")
            if isinstance(document["epsilon"], bool) or not isinstance(
                document["epsilon"], int | float
            ):
                raise ValueError("epsilon must be a number")
            history = check_history(document["history"])
        except (ValueError, UnicodeDecodeError, BastionError) as exc:
            raise LedgerError(
                f"local DP ledger {self.path} is corrupt ({exc}); it records the privacy this "
                "site's records have spent, so training will not start without it: restore it "
                "from a backup (delete it only if these records never trained here)"
            ) from None
        self._check_owner(document)
        return history

    def _check_owner(self, document: dict) -> None:
        if document["collaborator"] != self.collaborator:
            raise LedgerError(
                f"local DP ledger {self.path} belongs to collaborator "
                f"{document['collaborator']!r}, not {self.collaborator!r}; move it back to "
                "that site's workspace"
            )
        if document["federation"] != self.federation:
            raise LedgerError(
                f"local DP ledger {self.path} was written in another federation "
                f"({document['federation']}, epsilon {document['epsilon']:.4g}), not this one "
                f"({self.federation}); if the same records train here that spend still counts: "
                "refusing to reuse or drop it silently; move the file away deliberately to "
                "start this federation's ledger"
            )

    def save(
        self, history: list[HistoryEntry], *, epsilon: float, delta: float, plan_hash: str
    ) -> None:
        """Rewrite the ledger atomically (temporary file, fsync, rename)."""
        if not math.isfinite(epsilon):
            raise LedgerError(f"refusing to save a local DP epsilon of {epsilon}")
        document = {
            "format": LEDGER_FORMAT,
            "collaborator": self.collaborator,
            "federation": self.federation,
            "plan_sha256": plan_hash,
            "delta": delta,
            "epsilon": epsilon,
            "history": [list(entry) for entry in check_history(history)],
            "updated": time.time(),
        }
        atomic_write_bytes(self.path, json.dumps(document, indent=1).encode() + b"\n", mode=0o600)
