"""Task groups, random or static membership, and the assigner hook, through a real federation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support.simulation import Recorder, plain_workspace

from bastion.aggregator.assignment import (
    AssignmentError,
    SampledAssigner,
    group_members,
    sample_collaborators,
)
from bastion.errors import PlanError
from bastion.metrics.log import read_metrics, round_summaries
from bastion.plan import load_plan, parse_plan
from bastion.sim.inprocess import InProcessFederation

TASKS = [
    {"name": "validate_global", "kind": "validate", "metrics_aggregation": "min"},
    {"name": "train", "kind": "train", "args": {"epochs": 1, "lr": 0.2}},
    {"name": "validate_local", "kind": "validate", "model": "local"},
]


def _plan(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "groups",
        "rounds": 3,
        "collaborators": [f"site-{i}" for i in range(1, 11)],
        "tasks": TASKS,
        "task_runner": {"path": "task:build_runner"},
        "data": {"loader": "digits"},
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([{"name": "a", "tasks": ["train", "fit"]}], "names tasks ['fit'] that the plan does"),
        (
            [{"name": "a", "tasks": ["train"], "collaborators": ["site-1", "site-99"]}],
            "names ['site-99'], who are not on the roster",
        ),
        (
            [{"name": "a", "tasks": ["train"], "collaborators": ["site-1"], "fraction": 0.5}],
            "either 'collaborators' or 'fraction'",
        ),
        (
            [{"name": "a", "tasks": ["train"]}, {"name": "b", "tasks": ["validate_global"]}],
            "only one task group may take the remaining collaborators",
        ),
        (
            [
                {"name": "a", "tasks": ["train"], "fraction": 0.7},
                {"name": "b", "tasks": ["validate_global"], "fraction": 0.4},
            ],
            "add up to 1.1, over 1",
        ),
        (
            [
                {"name": "a", "tasks": ["train"], "collaborators": ["site-1", "site-2"]},
                {"name": "b", "tasks": ["validate_global"], "collaborators": ["site-2"]},
            ],
            "'site-2' is in task groups 'a' and 'b'",
        ),
        (
            [
                {"name": "a", "tasks": ["train"], "fraction": 0.5},
                {"name": "b", "tasks": ["validate_local"]},
            ],
            "task group 'b' validates the local model",
        ),
        ([{"name": "a", "tasks": ["validate_global"]}], "no task group runs a train task"),
        ([{"name": "a", "tasks": ["train", "train"]}], "tasks repeated: ['train']"),
    ],
)
def test_bad_task_groups_are_plan_errors_that_say_what_to_fix(groups: list, message: str) -> None:
    with pytest.raises(PlanError, match="task_groups") as caught:
        parse_plan(_plan(task_groups=groups))
    assert message in str(caught.value)


def test_task_groups_and_an_assigner_hook_exclude_each_other() -> None:
    groups = [{"name": "a", "tasks": ["train"]}]
    with pytest.raises(PlanError, match="either task_groups or assigner"):
        parse_plan(_plan(task_groups=groups, assigner="hooks:assign"))
    with pytest.raises(PlanError, match="assigner"):
        parse_plan(_plan(assigner="not a callable path"))


def test_static_groups_keep_their_members_and_random_groups_are_redrawn_per_round() -> None:
    groups = [
        {"name": "anchor", "tasks": ["train"], "collaborators": ["site-10"]},
        {"name": "trainers", "tasks": ["train", "validate_local"], "fraction": 0.6},
        {"name": "validators", "tasks": ["validate_global"]},
    ]
    roster = [f"site-{i}" for i in range(1, 11)]
    static = parse_plan(_plan(task_groups={"mode": "static", "seed": 4, "groups": groups}))
    random = parse_plan(_plan(task_groups={"mode": "random", "seed": 4, "groups": groups}))
    assert static.task_groups is not None and random.task_groups is not None

    draws = [group_members(static.task_groups, roster, r) for r in range(1, 6)]
    assert all(d == draws[0] for d in draws)
    redraws = [group_members(random.task_groups, roster, r) for r in range(1, 6)]
    assert len({tuple(sorted(d.items())) for d in redraws}) > 1
    assert redraws == [group_members(random.task_groups, roster, r) for r in range(1, 6)]
    for members in [*draws, *redraws]:
        assert set(members) == set(roster)
        assert members["site-10"] == "anchor"
        assert sum(g == "trainers" for g in members.values()) == 6  # 0.6 of the roster of 10
        assert sum(g == "validators" for g in members.values()) == 3


def test_sampling_applies_to_groups_and_tasks_keep_plan_order() -> None:
    groups = [
        {"name": "trainers", "tasks": ["validate_local", "train"], "fraction": 0.5},
        {"name": "validators", "tasks": ["validate_global"]},
    ]
    plan = parse_plan(
        _plan(
            task_groups={"mode": "random", "groups": groups},
            participation={"fraction": 0.3, "seed": 2},
        )
    )
    assert plan.task_groups is not None
    roster = plan.collaborator_names()
    assigner = SampledAssigner(plan)
    for round_number in range(1, 6):
        assigned = assigner.assign(roster, round_number)
        assert sorted(assigned) == sorted(
            sample_collaborators(roster, round_number, plan.participation)
        )
        members = group_members(plan.task_groups, roster, round_number)
        for name, tasks in assigned.items():
            expected = ["train", "validate_local"] if members[name] == "trainers" else None
            assert [t.name for t in tasks] == (expected or ["validate_global"])


def _run(workspace: Path) -> tuple[Recorder, InProcessFederation]:
    recorder = Recorder()
    federation = InProcessFederation(workspace, client_factory=recorder.client)
    federation.run()
    return recorder, federation


def test_one_group_trains_another_only_validates_every_round(tmp_path: Path) -> None:
    rounds = 4
    trainers = ["site-1", "site-2", "site-3"]
    validators = ["site-4", "site-5"]
    workspace = plain_workspace(
        tmp_path,
        collaborators=5,
        rounds=rounds,
        plan_changes={
            "tasks": TASKS,
            "task_groups": [
                {
                    "name": "trainers",
                    "collaborators": trainers,
                    "tasks": ["train", "validate_local"],
                },
                {"name": "validators", "tasks": ["validate_global"]},
            ],
        },
    )
    recorder, _ = _run(workspace)

    for round_number in range(1, rounds + 1):
        for name in trainers:
            assert recorder.received[(round_number, name)] == ["train", "validate_local"]
        for name in validators:
            assert recorder.received[(round_number, name)] == ["validate_global"]
    # The final evaluation: only the validators run a global-model validation task.
    final = {name: tasks for (r, name), tasks in recorder.received.items() if r == rounds + 1}
    assert final == {name: ["validate_global"] for name in validators}
    # What was sent matches: updates only from trainers, global metrics only from validators.
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    done = {(r["round"], r["collaborator"], r["task"]) for r in records if r["event"] == "task"}
    assert {(r, c) for r, c, t in done if t == "train"} == {
        (r, c) for r in range(1, rounds + 1) for c in trainers
    }
    assert {(r, c) for r, c, t in done if t == "validate_global"} == {
        (r, c) for r in range(1, rounds + 2) for c in validators
    }
    # validate_global names "min" as its metric rule: the summary is the smallest site value.
    for summary in round_summaries(records):
        values = [
            r["metrics"]["accuracy"]
            for r in records
            if r["event"] == "task"
            and r["round"] == summary["round"]
            and r["task"] == "validate_global"
        ]
        assert summary["tasks"]["validate_global"]["accuracy"] == min(values)
    summaries = round_summaries(records)
    assert summaries[-1]["tasks"]["validate_global"]["accuracy"] > 0.7  # the trainers' model


def test_random_fraction_groups_through_a_federation(tmp_path: Path) -> None:
    rounds = 4
    workspace = plain_workspace(
        tmp_path,
        collaborators=6,
        rounds=rounds,
        plan_changes={
            "tasks": TASKS,
            "task_groups": {
                "mode": "random",
                "seed": 9,
                "groups": [
                    {"name": "trainers", "fraction": 0.5, "tasks": ["train", "validate_local"]},
                    {"name": "validators", "tasks": ["validate_global"]},
                ],
            },
        },
    )
    recorder, federation = _run(workspace)
    plan = federation.plan
    assert plan.task_groups is not None
    roster = plan.collaborator_names()
    tasks_of = {g.name: g.tasks for g in plan.task_groups.groups}
    trainer_sets = set()
    for round_number in range(1, rounds + 1):
        members = group_members(plan.task_groups, roster, round_number)
        for name in roster:
            assert recorder.received[(round_number, name)] == tasks_of[members[name]]
        trainer_sets.add(frozenset(n for n in roster if members[n] == "trainers"))
    assert len(trainer_sets) > 1, "random mode should change the trainers between rounds"


HOOK = '''
def assign(participants, round_number):
    """Round-robin: one collaborator trains each round; the rest validate the global model."""
    trainer = participants[(round_number - 1) % len(participants)]
    return {
        name: ["train", "validate_local"] if name == trainer else ["validate_global"]
        for name in participants
    }
'''


def test_an_assigner_hook_decides_each_round(tmp_path: Path) -> None:
    rounds = 4
    workspace = plain_workspace(
        tmp_path,
        collaborators=3,
        rounds=rounds,
        files={"round_robin.py": HOOK},
        plan_changes={"tasks": TASKS, "assigner": "round_robin:assign"},
    )
    recorder, _ = _run(workspace)
    roster = ["site-1", "site-2", "site-3"]
    for round_number in range(1, rounds + 1):
        trainer = roster[(round_number - 1) % 3]
        for name in roster:
            expected = ["train", "validate_local"] if name == trainer else ["validate_global"]
            assert recorder.received[(round_number, name)] == expected
    # Final evaluation: the hook's answer for round R+1, global validation tasks only.
    final_trainer = roster[rounds % 3]
    final = {name: tasks for (r, name), tasks in recorder.received.items() if r == rounds + 1}
    assert final == {name: ["validate_global"] for name in roster if name != final_trainer}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("return {'site-9': ['train']}", "assigned tasks to 'site-9', who is not among"),
        ("return {'site-1': ['train', 'fit']}", "gave 'site-1' unknown tasks ['fit']"),
        ("return [('site-1', ['train'])]", "returned list; it must return a mapping"),
        ("return {'site-1': 'train'}", "expected a list of task names"),
        ("return {'site-1': ['train', 'train']}", "tasks more than once: ['train']"),
        ("return {'site-1': ['validate_local', 'train']}", "a train task must come before it"),
        ("raise KeyError('boom')", "failed: KeyError: 'boom'"),
    ],
)
def test_a_bad_assigner_hook_is_a_clear_error(tmp_path: Path, body: str, message: str) -> None:
    workspace = plain_workspace(
        tmp_path,
        collaborators=2,
        files={"bad_hook.py": f"def assign(participants, round_number):\n    {body}\n"},
        plan_changes={"tasks": TASKS, "assigner": "bad_hook:assign"},
        initialize=True,
    )
    with pytest.raises(AssignmentError, match="assigner bad_hook:assign \\(round 1\\)") as caught:
        InProcessFederation(workspace).run()
    assert message in str(caught.value)


def test_a_hook_in_a_plan_without_a_workspace_needs_one(tmp_path: Path) -> None:
    plan = parse_plan(_plan(assigner="hooks:assign"))
    with pytest.raises(PlanError, match="not loaded from a workspace"):
        SampledAssigner(plan)
    (tmp_path / "hooks.py").write_text(HOOK.replace("round_robin", "hooks"))
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(_plan(assigner="hooks:assign")))
    loaded = load_plan(tmp_path)
    assigned = SampledAssigner(loaded).assign(loaded.collaborator_names(), 2)
    assert [t.name for t in assigned["site-2"]] == ["train", "validate_local"]
