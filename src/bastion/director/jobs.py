"""Accepting a job: the signed workspace verified, its targeting checked against its plan.

Nothing of a job's workspace is imported here: the archive is unpacked by the safe importer
and verified against the manifest its model owner signed (``bastion.workspace.verify``);
the plan is read as data. The submitter must be the model owner who signed it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import BastionError
from bastion.plan import Plan, load_plan
from bastion.storage.checkpoints import INITIAL
from bastion.workspace.archive import import_workspace
from bastion.workspace.verify import verify_workspace

ARCHIVE = "workspace.tar.gz"
WORKSPACE = "workspace"


class JobRefused(BastionError):
    """The director will not queue this job; the message says why."""


class NotFound(BastionError):
    """No such job or site among those the caller may see."""


class Denied(BastionError):
    """The caller's role may not do that."""


@dataclass(frozen=True)
class Targeting:
    """Which sites a job runs on: named ones, or every site offering a dataset (at least N)."""

    sites: tuple[str, ...] = ()
    dataset: str | None = None
    min_sites: int = 1

    @classmethod
    def parse(cls, raw: Any) -> Targeting:
        if not isinstance(raw, dict):
            raise JobRefused("targeting must be an object with 'sites' or 'dataset'")
        sites = raw.get("sites") or []
        dataset = raw.get("dataset")
        min_sites = raw.get("min_sites", 1)
        if not isinstance(sites, list) or not all(isinstance(s, str) and s for s in sites):
            raise JobRefused("targeting.sites must be a list of site names")
        if dataset is not None and not isinstance(dataset, str):
            raise JobRefused("targeting.dataset must be a dataset name")
        if not isinstance(min_sites, int) or isinstance(min_sites, bool) or min_sites < 1:
            raise JobRefused("--min-sites must be a whole number of at least 1")
        if bool(sites) == (dataset is not None):
            raise JobRefused("target a job at named sites (--sites) or at a dataset (--dataset)")
        return cls(tuple(dict.fromkeys(sites)), dataset, min_sites)

    def to_json(self) -> dict[str, Any]:
        if self.sites:
            return {"sites": list(self.sites)}
        return {"dataset": self.dataset, "min_sites": self.min_sites}

    def check(self, plan: Plan) -> None:
        roster = plan.collaborator_names()
        strangers = [s for s in self.sites if s not in roster]
        if strangers:
            raise JobRefused(
                f"sites {strangers} are not on the signed plan's roster {roster}; "
                "the model owner signs who may train the model"
            )
        if self.dataset is not None:
            if self.dataset != plan.data.dataset:
                raise JobRefused(
                    f"the plan trains on dataset {plan.data.dataset!r}, not {self.dataset!r}"
                )
            if self.min_sites > len(roster):
                raise JobRefused(
                    f"--min-sites {self.min_sites} exceeds the signed plan's roster ({len(roster)})"
                )
        needed = max(plan.participation.min_collaborators, plan.timeouts.min_results)
        if len(self.sites or roster) < needed:
            raise JobRefused(f"the plan needs at least {needed} sites")


@dataclass(frozen=True)
class AcceptedJob:
    plan: Plan
    workspace: Path
    measurement: str


def accept_workspace(job_dir: Path, owner: str, ca_cert: Path, targeting: Targeting) -> AcceptedJob:
    """Unpack ``job_dir/workspace.tar.gz`` and verify it; on refusal the job dir is removed."""
    try:
        workspace = import_workspace(job_dir / ARCHIVE, job_dir / WORKSPACE)
        plan = load_plan(workspace)
        verified = verify_workspace(workspace, plan, ca_cert)
        if verified.signer is None or verified.signer.name != owner:
            raise JobRefused(
                f"the workspace is signed by {verified.signer}, not by the submitter {owner!r}: "
                "a model owner submits only workspaces they signed"
            )
        if not (workspace / plan.output.checkpoints / INITIAL).is_file():
            raise JobRefused(
                "the workspace has no initial model: run `bastion plan initialize`, "
                "measure, sign and submit again"
            )
        targeting.check(plan)
    except BastionError as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        if isinstance(exc, JobRefused):
            raise
        raise JobRefused(f"job refused: {exc}") from None
    return AcceptedJob(plan, workspace, verified.measurement)
