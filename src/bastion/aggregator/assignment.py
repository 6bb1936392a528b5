"""Which collaborators run which tasks in a round.

Each round a fraction C of the roster is sampled (seeded, so a run is reproducible).
The sampled collaborators then run either every task of the plan, the tasks of their
task group (``task_groups``), or what the plan's ``assigner`` hook returns for them.
After the last round, the final evaluation asks the same rule which global-model
validation tasks each collaborator runs, without sampling.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from bastion.errors import PlanError
from bastion.plan import Plan
from bastion.spec.names import repeated
from bastion.spec.rounds import ParticipationSpec
from bastion.spec.tasks import TaskGroupsSpec, TaskSpec
from bastion.workspace.code import import_callable

Assignments = dict[str, list[TaskSpec]]
AssignerHook = Callable[[list[str], int], Any]


class AssignmentError(PlanError):
    """The plan's assigner hook returned something that is not a valid assignment."""


class Assigner(Protocol):
    def assign(self, roster: list[str], round_number: int) -> Assignments:
        """Tasks per collaborator for ``round_number``; absent collaborators sit out."""
        ...


def sample_collaborators(
    roster: list[str], round_number: int, spec: ParticipationSpec
) -> list[str]:
    """``max(min_collaborators, ceil(C * n))`` collaborators, drawn per round from a seeded generator.

    With ``sampling: poisson`` each collaborator joins independently with probability C,
    drawn from the OS CSPRNG: differential privacy's amplification by sampling needs a
    sample nobody can predict from the plan, so it is not reproducible.
    """
    if spec.sampling == "poisson":
        draw = secrets.SystemRandom()
        return [name for name in roster if spec.fraction >= 1 or draw.random() < spec.fraction]
    count = min(len(roster), max(spec.min_collaborators, math.ceil(spec.fraction * len(roster))))
    if count == len(roster):
        return list(roster)
    rng = np.random.default_rng([spec.seed, round_number])
    chosen = set(rng.choice(len(roster), size=count, replace=False).tolist())
    return [name for i, name in enumerate(roster) if i in chosen]


def group_members(spec: TaskGroupsSpec, roster: list[str], round_number: int) -> dict[str, str]:
    """The task group of each collaborator (those in no group are absent).

    Named members first; then each ``fraction`` group, in plan order, takes
    ``max(1, round(fraction * len(roster)))`` of the others from a seeded shuffle (the
    seed alone in ``static`` mode, seed and round in ``random`` mode); the group with
    neither takes whoever is left.
    """
    membership: dict[str, str] = {}
    for group in spec.groups:
        for name in group.collaborators or []:
            if name in roster:
                membership[name] = group.name
    pool = [name for name in roster if name not in membership]
    seed = [spec.seed] if spec.mode == "static" else [spec.seed, round_number]
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    for group in spec.groups:
        if group.fraction is None:
            continue
        count = min(len(order), max(1, math.floor(group.fraction * len(roster) + 0.5)))
        for name in order[:count]:
            membership[name] = group.name
        order = order[count:]
    rest = next(
        (g.name for g in spec.groups if g.collaborators is None and g.fraction is None), None
    )
    if rest is not None:
        for name in order:
            membership[name] = rest
    return membership


class SampledAssigner:
    """The plan's assignment rule: sampling, then all tasks, task groups, or the hook.

    ``workspace`` is where the ``assigner`` hook is imported from; it defaults to the
    folder the plan was loaded from.
    """

    def __init__(self, plan: Plan, workspace: Any = None) -> None:
        self._plan = plan
        self._tasks = list(plan.tasks)
        self._by_name = {t.name: t for t in plan.tasks}
        self._participation = plan.participation
        self._groups = plan.task_groups
        self._hook: AssignerHook | None = None
        if plan.assigner is not None:
            folder = workspace if workspace is not None else plan.workspace
            if folder is None:
                raise PlanError(
                    f"key 'assigner': cannot import {plan.assigner!r} from a plan that was not "
                    "loaded from a workspace; load it with bastion.plan.load_plan(WORKSPACE)"
                )
            self._hook = import_callable(plan.assigner, folder, "assigner")

    def assign(self, roster: list[str], round_number: int) -> Assignments:
        chosen = sample_collaborators(roster, round_number, self._participation)
        if self._hook is not None:
            return self._from_hook(chosen, round_number)
        return self._from_plan(chosen, roster, round_number)

    def final_evaluation(self, roster: list[str]) -> Assignments:
        """Every collaborator runs its rule's global-model validation tasks on the final model."""
        final_round = self._plan.rounds + 1
        if self._hook is not None:
            planned = self._from_hook(list(roster), final_round)
        else:
            planned = self._from_plan(list(roster), roster, final_round)
        result = {
            name: [t for t in tasks if t.kind == "validate" and t.model == "global"]
            for name, tasks in planned.items()
        }
        return {name: tasks for name, tasks in result.items() if tasks}

    def _from_plan(self, chosen: list[str], roster: list[str], round_number: int) -> Assignments:
        if self._groups is None:
            return {name: list(self._tasks) for name in chosen}
        membership = group_members(self._groups, roster, round_number)
        tasks_of = {g.name: set(g.tasks) for g in self._groups.groups}
        return {
            name: [t for t in self._tasks if t.name in tasks_of[membership[name]]]
            for name in chosen
            if name in membership
        }

    def _from_hook(self, participants: list[str], round_number: int) -> Assignments:
        assert self._hook is not None
        where = f"assigner {self._plan.assigner} (round {round_number})"
        try:
            answer = self._hook(list(participants), round_number)
        except Exception as exc:  # user code: report it as a plan problem, with its cause
            raise AssignmentError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        return validate_hook_result(answer, participants, self._by_name, where)


def validate_hook_result(
    answer: object, participants: Sequence[str], tasks: Mapping[str, TaskSpec], where: str
) -> Assignments:
    """Check an assigner hook's answer: known participants, known tasks, each at most once."""
    if not isinstance(answer, Mapping):
        raise AssignmentError(
            f"{where} returned {type(answer).__name__}; it must return a mapping of "
            "collaborator name to a list of task names"
        )
    allowed = set(participants)
    result: Assignments = {}
    for name, requested in answer.items():
        if name not in allowed:
            raise AssignmentError(
                f"{where} assigned tasks to {name!r}, who is not among this round's "
                f"participants {sorted(allowed)}"
            )
        if isinstance(requested, str) or not isinstance(requested, Sequence):
            raise AssignmentError(
                f"{where} gave {name!r} {requested!r}; expected a list of task names"
            )
        names = [t.name if isinstance(t, TaskSpec) else t for t in requested]
        unknown = [t for t in names if t not in tasks]
        if unknown:
            raise AssignmentError(
                f"{where} gave {name!r} unknown tasks {unknown}; the plan's tasks are {list(tasks)}"
            )
        twice = repeated(names)
        if twice:
            raise AssignmentError(f"{where} gave {name!r} tasks more than once: {twice}")
        specs = [tasks[t] for t in names]
        _check_local_follows_train(specs, f"{where} for {name!r}")
        result[str(name)] = specs
    return result


def _check_local_follows_train(specs: list[TaskSpec], where: str) -> None:
    trained = False
    for task in specs:
        if task.kind == "train":
            trained = True
        elif task.model == "local" and not trained:
            raise AssignmentError(
                f"{where}: {task.name!r} validates the locally trained model, so a train task "
                "must come before it"
            )


def final_evaluation(plan: Plan) -> Assignments:
    """After the last round the plan's rule picks who validates the final global model."""
    return SampledAssigner(plan).final_evaluation(plan.collaborator_names())
