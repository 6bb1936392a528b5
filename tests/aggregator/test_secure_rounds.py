"""Secure aggregation rounds through the real aggregator: the sum survives tolerated dropouts
at every stage, too many dropouts fail the round cleanly, and strategies compose (or are
refused) as the plan says."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from support.secure_rounds import STAGES, make_harness
from support.simulation import plain_workspace

from bastion.algorithms.dp_fedavg import DPFedAvg
from bastion.errors import PlanError
from bastion.plan import load_plan
from bastion.privacy.secagg.session import Step, neighbours_for, threshold_for
from bastion.protocol import NotAssigned
from bastion.spec.differential_privacy import DPFedAvgArgs
from bastion.spec.secure_aggregation import SecureAggregationSpec


def _draw(seed: int, stage: Step | None) -> tuple[int, dict, dict[str, Step]]:
    """A random roster, threshold and graph, with as many dropouts as the round tolerates."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    fraction = float(rng.choice([0.5, 0.6, 0.75]))
    spec: dict = {"threshold_fraction": fraction}
    if n >= 6 and rng.random() < 0.5:
        spec["neighbours"] = 2 if n < 8 else 4
    names = [f"site-{i}" for i in range(1, n + 1)]
    k = neighbours_for(SecureAggregationSpec(**spec), n)
    holders = n if k is None else k + 1
    tolerated = holders - threshold_for(SecureAggregationSpec(**spec), holders)
    if k is not None:
        tolerated = min(tolerated, 1)  # SecAgg+: keep each neighbourhood within its own n - t
    dropped = rng.choice(names, size=tolerated, replace=False)
    stages = {str(name): stage or STAGES[int(rng.integers(len(STAGES)))] for name in dropped}
    return n, spec, stages


CASES = [(seed, stage) for seed, stage in enumerate(STAGES)]
CASES += [(seed, None) for seed in range(len(STAGES), len(STAGES) + 4)]


@pytest.mark.parametrize(("seed", "stage"), CASES, ids=lambda v: getattr(v, "value", str(v)))
def test_recovered_average_equals_plain_fedavg_with_tolerated_dropouts(
    tmp_path: Path, seed: int, stage: Step | None
) -> None:
    n, spec, drop_before = _draw(seed, stage)
    harness = make_harness(tmp_path, n, {"secure_aggregation": spec})
    session = harness.train()
    harness.drive(drop_before)
    assert session.outcome is not None, session.failure
    contributors = sorted(
        name
        for name in harness.names
        if drop_before.get(name) not in (Step.ADVERTISE_KEYS, Step.SHARE_KEYS, Step.MASKED_INPUT)
    )
    assert list(session.contributors) == contributors
    expected = harness.expected_average(contributors)
    bound = session.outcome.error_bound / session.outcome.total_weight
    assert session.outcome.total_weight == sum(harness.counts[c] for c in contributors)
    for key, value in harness.aggregator.model.items():
        error = np.max(np.abs(value.astype(np.float64) - expected[key]))
        assert error <= bound + 1e-5, (key, error, bound)
    (event,) = harness.events("secure_aggregation")
    assert event["outcome"] == "ok" and event["contributors"] == contributors


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.value)
def test_more_than_n_minus_t_dropouts_fail_the_round_without_unmasking(
    tmp_path: Path, stage: Step
) -> None:
    harness = make_harness(tmp_path, 5)  # t = 3 of 5: two dropouts are tolerated, not three
    session = harness.train()
    start = {k: v.copy() for k, v in harness.aggregator.model.items()}
    harness.drive({name: stage for name in harness.names[:3]})
    assert session.outcome is None and session.failure
    assert session.server is not None
    held = session.server.held_secrets().values()
    assert not any(h.self_mask_recovered or h.key_recovered for h in held)
    for key, value in harness.aggregator.model.items():
        np.testing.assert_array_equal(value, start[key])
    (event,) = harness.events("secure_aggregation")
    assert event["outcome"] == "aborted" and event["contributors"] == []
    (round_event,) = [r for r in harness.events("round") if r["round"] == 1]
    assert "secure_aggregation" in round_event["rejected"] and round_event["accepted"] == 0


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-clip", "adaptive-clip"])
def test_dp_fedavg_adds_its_noise_to_the_securely_summed_client_clipped_deltas(
    tmp_path: Path, adaptive: bool
) -> None:
    args: dict = {"noise_multiplier": 0.8, "clip_norm": 0.3, "seed": 11, "adaptive": adaptive}
    if adaptive:
        args["count_noise_std"] = 1.0
    harness = make_harness(tmp_path, 4, {"aggregation": {"strategy": "dp_fedavg", "args": args}})
    harness.train()
    harness.drive()
    reference = DPFedAvg.from_args(DPFedAvgArgs(expected_clients=4, **args))
    reference.begin_round(harness.start_model, 1)
    for name in harness.names:
        reference.accumulate(name, harness.local[name], 1.0)
    expected = reference.finalize()
    # Same seeded noise on both sides: only fixed-point rounding (and the sliver of norm
    # clients keep free for it) separates the secure round from the server-side one.
    for key, value in harness.aggregator.model.items():
        np.testing.assert_allclose(value, expected[key], atol=1e-5)
    strategy = harness.aggregator.strategy
    assert isinstance(strategy, DPFedAvg)
    assert math.isclose(strategy.clip_norm, reference.clip_norm, rel_tol=1e-9)
    (event,) = harness.events("secure_aggregation")
    assert event["outcome"] == "ok" and event["total_weight"] == 4  # each client counts once


def test_a_plain_training_result_is_refused_when_secure_aggregation_is_on(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, 3)
    client = harness.collaborators["site-1"]._client
    with pytest.raises(NotAssigned, match="secure aggregation"):
        client.send_result(1, "train", 10, {}, dict(harness.aggregator.model))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aggregation": {"strategy": "median"}}, "median needs every update"),
        ({"aggregation": {"strategy": "krum", "args": {"f": 0}}}, "cannot run with secure_agg"),
        ({"aggregation": {"strategy": "trimmed_mean"}}, "cannot run with secure_aggregation"),
        ({"aggregation": {"strategy": "fedcurv"}}, "FedCurv"),
        ({"secure_aggregation": {"min_clients": 9}}, "min_clients"),
        ({"secure_aggregation": {"neighbours": 3}}, "even"),
        ({"secure_aggregation": {"threshold_fraction": 0.4}}, "threshold_fraction"),
        (
            {
                "aggregation": {
                    "strategy": "dp_fedavg",
                    "args": {"noise_multiplier": 1, "clip_norm": 1},
                },
                "compression": {"stages": [{"stage": "float16"}]},
            },
            "compression",
        ),
    ],
)
def test_plans_that_cannot_compose_with_secure_aggregation_are_refused(
    tmp_path: Path, changes: dict, message: str
) -> None:
    plan_changes = {"secure_aggregation": {}, **changes}
    if "secure_aggregation" in changes:
        plan_changes["secure_aggregation"] = changes["secure_aggregation"]
    with pytest.raises(PlanError, match=message):
        plain_workspace(tmp_path, collaborators=4, plan_changes=plan_changes)


def test_two_train_tasks_per_round_are_refused(tmp_path: Path) -> None:
    workspace = plain_workspace(tmp_path, collaborators=3, initialize=False)
    plan = load_plan(workspace).model_dump(mode="json", exclude_none=True)
    plan["tasks"].append({"name": "train_again", "kind": "train"})
    plan["secure_aggregation"] = {}
    from bastion.plan import parse_plan

    with pytest.raises(PlanError, match="one train task"):
        parse_plan(plan)


def test_a_site_that_declines_training_is_left_out_of_the_secure_sum(tmp_path: Path) -> None:
    """A local-DP decline before key advertisement: the others' sum is recovered without it."""
    harness = make_harness(tmp_path, 4)
    decliner, *others = harness.names
    aggregator = harness.aggregator
    number = aggregator.current_round
    reason = "local DP budget: epsilon spent 1.9, this round would bring it to 2.3"
    assert aggregator.decline_task(decliner, number, "train", reason, {"dp_epsilon": 1.9}) == (
        True,
        "",
    )
    assert aggregator.get_tasks(decliner).action == "wait"

    start = dict(aggregator.model)
    for name in others:
        collaborator = harness.collaborators[name]
        update = collaborator.run_tasks(collaborator._client.get_tasks())
        assert update is not None
        harness.updates[name] = update
        harness.local[name] = collaborator._runner.get_weights()
    harness.start_model = start
    session = aggregator.round_protocol.session  # type: ignore[union-attr]
    assert session is not None
    harness.drive()

    assert session.outcome is not None, session.failure
    assert list(session.contributors) == sorted(others)
    expected = harness.expected_average(sorted(others))
    bound = session.outcome.error_bound / session.outcome.total_weight
    for key, value in aggregator.model.items():
        assert np.max(np.abs(value.astype(np.float64) - expected[key])) <= bound + 1e-5
    [declined] = harness.events("declined")
    assert declined["collaborator"] == decliner and declined["reason"] == reason
    [event] = harness.events("secure_aggregation")
    assert event["outcome"] == "ok" and event["contributors"] == sorted(others)


def test_a_restarted_aggregator_never_offers_an_attempt_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Collaborators join only increasing attempts of a round: a restart within the same
    second (seen under load) or after the clock stepped back must still move forward."""
    from types import SimpleNamespace

    from bastion.aggregator import secure_protocol
    from bastion.aggregator.secure_protocol import SecureAggregationRounds

    now = [1_800_000_000.25]
    monkeypatch.setattr(secure_protocol, "time", SimpleNamespace(time=lambda: now[0]))
    monkeypatch.setattr(
        secure_protocol, "SecureAggregationRound", lambda context, attempt, *rest: attempt
    )
    round_two = SimpleNamespace(progress=SimpleNamespace(final_evaluation=False, number=2))
    attempts = tmp_path / "save" / secure_protocol.SECURE_ATTEMPTS_FILE

    first = SecureAggregationRounds(attempts_file=attempts)
    offered = [first(round_two), first(round_two)]  # the round's session failed once
    assert offered == [1_800_000_000, 1_800_000_001]
    restarted = SecureAggregationRounds(attempts_file=attempts)  # killed, back the same second
    offered.append(restarted(round_two))
    now[0] -= 3600  # the clock stepped back an hour
    offered.append(SecureAggregationRounds(attempts_file=attempts)(round_two))
    assert offered == sorted(set(offered)) and offered[-1] == 1_800_000_003

    attempts.write_text("{not json")
    assert SecureAggregationRounds(attempts_file=attempts)(round_two) == int(now[0])
    assert "ignoring" in caplog.text and secure_protocol.SECURE_ATTEMPTS_FILE in caplog.text
