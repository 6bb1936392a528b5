"""Which collaborators run which tasks in a round.

An assigner maps (roster, round) to tasks per collaborator. The default samples a
fraction C of the roster each round (seeded, so a run is reproducible) and gives
every sampled collaborator all of the plan's tasks.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from bastion.plan import ParticipationSpec, Plan, TaskSpec

Assignments = dict[str, list[TaskSpec]]


class Assigner(Protocol):
    def assign(self, roster: list[str], round_number: int) -> Assignments:
        """Tasks per collaborator for ``round_number``; absent collaborators sit out."""
        ...


def sample_collaborators(
    roster: list[str], round_number: int, spec: ParticipationSpec
) -> list[str]:
    """``max(min_collaborators, ceil(C * n))`` collaborators, drawn per round from a seeded generator."""
    count = min(len(roster), max(spec.min_collaborators, math.ceil(spec.fraction * len(roster))))
    if count == len(roster):
        return list(roster)
    rng = np.random.default_rng([spec.seed, round_number])
    chosen = set(rng.choice(len(roster), size=count, replace=False).tolist())
    return [name for i, name in enumerate(roster) if i in chosen]


class SampledAssigner:
    """Every sampled collaborator runs every task of the plan, in plan order."""

    def __init__(self, plan: Plan) -> None:
        self._tasks = list(plan.tasks)
        self._participation = plan.participation

    def assign(self, roster: list[str], round_number: int) -> Assignments:
        chosen = sample_collaborators(roster, round_number, self._participation)
        return {name: list(self._tasks) for name in chosen}


def final_evaluation(plan: Plan) -> Assignments:
    """After the last round every collaborator validates the final global model."""
    tasks = [t for t in plan.tasks if t.kind == "validate" and t.model == "global"]
    if not tasks:
        return {}
    return {name: list(tasks) for name in plan.collaborator_names()}
