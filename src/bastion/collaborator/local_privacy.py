"""A site's local DP budget: before each train task, the epsilon that task would reach.

``differential_privacy.local.epsilon_budget`` is per site: what its own records may spend
at ``delta`` over every round they train in. Before a train task the collaborator asks
the runner how many DP-SGD steps it will take (``local_dp_steps``) and the trainer what
epsilon its accountant would report after them (``epsilon_after``: a copy of the
history, stepped as training steps it). Over the budget, the site declines the task.
After every training the guard writes the site's ledger (``SiteLedger``), before the
update leaves the site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from bastion.data.types import DataShard
from bastion.errors import BastionError
from bastion.plan import Plan
from bastion.privacy.dp.local import LocalDPTrainer
from bastion.privacy.dp.site_ledger import SiteLedger
from bastion.runners.base import LocalPrivacy
from bastion.spec.tasks import TaskSpec

log = logging.getLogger("bastion.privacy")


@dataclass(frozen=True)
class Refusal:
    """Why a site declines a train task, and the figures it reports with the decline."""

    what: str  # which site declines which task
    reason: str  # what the aggregator is told
    metrics: dict[str, float]

    @property
    def message(self) -> str:
        """The site's log line: site, epsilon spent, epsilon the round would reach, budget."""
        return f"{self.what}: {self.reason}"


class SitePrivacy(Protocol):
    """What the collaborator loop asks of a site's local DP before and after each training."""

    def refusal(self, data: DataShard, round_number: int, task: TaskSpec) -> Refusal | None: ...

    def record(self) -> None: ...


class NoLocalPrivacy:
    """A site without local DP: it never declines a task and has no ledger to write."""

    def refusal(self, data: DataShard, round_number: int, task: TaskSpec) -> Refusal | None:
        return None

    def record(self) -> None:
        return None


class LocalPrivacyGuard:
    """One site's local DP: its persistent ledger and its budget."""

    def __init__(
        self,
        name: str,
        runner: LocalPrivacy,
        budget: float | None,
        ledger: SiteLedger | None = None,
        plan_hash: str = "",
    ) -> None:
        trainer = runner.local_dp
        if trainer is None:
            raise BastionError(f"{name}: the runner does not train with DP-SGD (enable_local_dp)")
        self.name = name
        self.runner = runner
        self.trainer: LocalDPTrainer = trainer
        self.budget = budget
        self.ledger = ledger
        self.plan_hash = plan_hash

    @classmethod
    def for_plan(
        cls, plan: Plan, name: str, runner: object, ledger: SiteLedger | None = None
    ) -> LocalPrivacyGuard | None:
        """The guard of a plan with local DP (history loaded from ``ledger``), else None."""
        spec = plan.differential_privacy
        if spec is None or spec.local is None:
            return None
        if not isinstance(runner, LocalPrivacy) or runner.local_dp is None:
            return None  # build_runner refuses such a runner before we get here
        guard = cls(name, runner, spec.local.epsilon_budget, ledger, plan.canonical_hash())
        if ledger is not None:
            history = ledger.load()
            guard.trainer.load_history(history)
            if history:
                log.info(
                    "%s: local DP ledger %s: epsilon %.4g already spent at delta %g",
                    name,
                    ledger.path,
                    guard.spent(),
                    guard.trainer.delta,
                )
        return guard

    def spent(self) -> float:
        """Epsilon this site's records have spent so far."""
        return float(self.trainer.epsilon())

    def refusal(self, data: DataShard, round_number: int, task: TaskSpec) -> Refusal | None:
        """Why this site must decline ``task``, or None when its steps fit the budget."""
        if task.kind != "train" or self.budget is None:
            return None
        trainer = self.trainer
        rate, steps = self.runner.local_dp_steps(data, **task.args)
        spent, after = self.spent(), float(trainer.epsilon_after(rate, steps))
        if after <= self.budget:
            log.debug(
                "%s: %s will bring epsilon to %.4g of %g", self.name, task.name, after, self.budget
            )
            return None
        return Refusal(
            f"{self.name}: declining {task.name!r} of round {round_number}",
            f"local DP budget: epsilon spent {spent:.4g}, its {steps} DP-SGD steps would bring "
            f"it to {after:.4g} (delta={trainer.delta:g}), over "
            f"differential_privacy.local.epsilon_budget={self.budget:g}",
            {"dp_epsilon": spent, "dp_epsilon_next": after, "dp_epsilon_budget": self.budget},
        )

    def record(self) -> None:
        """Write the site's ledger after a training, before its update is sent."""
        if self.ledger is None:
            return
        trainer = self.trainer
        self.ledger.save(
            trainer.history(), epsilon=self.spent(), delta=trainer.delta, plan_hash=self.plan_hash
        )


def site_privacy(
    plan: Plan, name: str, runner: object, ledger: SiteLedger | None = None
) -> SitePrivacy:
    """The site's local DP as the plan sets it: a guard with its budget, or no local DP."""
    guard = LocalPrivacyGuard.for_plan(plan, name, runner, ledger)
    return NoLocalPrivacy() if guard is None else guard
