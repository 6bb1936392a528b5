"""The aggregator's account of local DP budgets.

With ``differential_privacy.local`` each site accounts its own DP-SGD and, given
``local.epsilon_budget``, declines a train task whose steps would take it past that
budget: the round stops waiting for it at once. The tracker keeps each site's latest
epsilon (from its training metrics or its decline) for the metrics log and ``bastion
status``, and once every collaborator that can train has declined, the next round is
the final evaluation, as when central DP's budget runs out
(``bastion.aggregator.privacy_observers``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from bastion.aggregator.assignment import group_members
from bastion.plan import Plan

log = logging.getLogger("bastion.aggregator")

#: Metrics a site reports with local DP: spent so far, and what a declined task would reach.
SPENT, NEXT = "dp_epsilon", "dp_epsilon_next"


def potential_trainers(plan: Plan) -> set[str]:
    """Collaborators the plan may ever give a train task.

    Everyone, unless task groups keep some out of training: members named in a group
    without a train task, and with ``static`` groups whoever the seed put in one.
    """
    roster = plan.collaborator_names()
    groups = plan.task_groups
    if groups is None or plan.assigner is not None:
        return set(roster)
    kinds = {t.name: t.kind for t in plan.tasks}
    training = {g.name for g in groups.groups if any(kinds.get(t) == "train" for t in g.tasks)}
    if groups.mode == "static":
        members = group_members(groups, roster, 1)
        return {name for name, group in members.items() if group in training}
    named = {name: g.name for g in groups.groups for name in g.collaborators or []}
    drawn = any(g.name in training for g in groups.groups if g.collaborators is None)
    return {name for name in roster if (named[name] in training if name in named else drawn)}


class LocalPrivacyTracker:
    """Each site's reported local DP epsilon, who declined training, and when training ends."""

    def __init__(self, plan: Plan) -> None:
        spec = plan.differential_privacy
        assert spec is not None and spec.local is not None
        self.delta = spec.delta
        self.budget = spec.local.epsilon_budget
        self.trainers = potential_trainers(plan)
        self.epsilon: dict[str, float] = {}
        self.exhausted: dict[str, float] = {}  # site -> the epsilon its declined task would reach

    @classmethod
    def for_plan(cls, plan: Plan) -> LocalPrivacyTracker | None:
        """A tracker when the plan trains with local DP-SGD, else None."""
        spec = plan.differential_privacy
        return cls(plan) if spec is not None and spec.local is not None else None

    def trained(self, collaborator: str, metrics: Mapping[str, float]) -> None:
        if isinstance(metrics.get(SPENT), int | float):
            self.epsilon[collaborator] = float(metrics[SPENT])
        self.exhausted.pop(collaborator, None)

    def declined(self, collaborator: str, metrics: Mapping[str, float]) -> None:
        if isinstance(metrics.get(SPENT), int | float):
            self.epsilon[collaborator] = float(metrics[SPENT])
        self.exhausted[collaborator] = float(metrics.get(NEXT, math.nan))

    def stop_reason(self) -> str | None:
        """Why training is over, once every collaborator that can train has declined."""
        if not self.trainers or not self.trainers <= set(self.exhausted):
            return None
        spent = ", ".join(
            f"{name} {self.epsilon[name]:.4g}" for name in sorted(self.trainers & set(self.epsilon))
        )
        return (
            f"local privacy budget: every collaborator declined training, its next round would "
            f"pass differential_privacy.local.epsilon_budget={self.budget:g} at delta="
            f"{self.delta:g} (epsilon spent: {spent or 'not reported'})"
        )

    def report(self) -> dict[str, Any]:
        """What the metrics log and ``bastion status`` show of local DP."""
        return {
            "mechanism": "dp_sgd",
            "delta": self.delta,
            "epsilon_budget": self.budget,
            "epsilon": dict(sorted(self.epsilon.items())),
            "declined": sorted(self.exhausted),
            "stopped": self.stop_reason(),
        }
