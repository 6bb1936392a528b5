"""Plan names map to strategies; bad ``aggregation.args`` fail with the key and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.algorithms.fedadam import FedAdam
from bastion.algorithms.fedcurv import fedcurv_tensors
from bastion.algorithms.registry import STRATEGIES, STRATEGY_ARGS, create_strategy
from bastion.errors import PlanError

VALID_ARGS = {
    "krum": {"f": 1},
    "dp_fedavg": {"noise_multiplier": 1e-9, "expected_clients": 5, "clip_norm": 1e6, "seed": 0},
}


def test_names_match_the_strategy_classes():
    assert set(STRATEGIES) == {
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "median",
        "trimmed_mean",
        "krum",
        "fedcurv",
        "dp_fedavg",
    }
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert isinstance(create_strategy(name, VALID_ARGS.get(name, {})), cls)


def test_every_argument_says_what_it_accepts():
    for name, model in STRATEGY_ARGS.items():
        for key, field in model.model_fields.items():
            assert field.description, f"{name}.{key} has no description"


def test_arguments_reach_the_strategy():
    strategy = create_strategy("fedadam", {"eta": 1, "tau": 1e-4, "beta_2": 0.999})
    assert isinstance(strategy, FedAdam)
    assert (strategy.eta, strategy.tau, strategy.args.beta_2) == (1.0, 1e-4, 0.999)
    assert isinstance(strategy.eta, float)  # a YAML integer is a fine float
    assert create_strategy("fedavg", None).accepted == 0


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("fedadam", {"lr": 0.1}, r"aggregation\.args\.lr: .*allowed: eta, beta_1, beta_2, tau"),
        ("fedavg", {"eta": 0.1}, r"aggregation\.args\.eta: .*no argument 'eta'; allowed: none"),
        ("fedyogi", {"eta": "0.1"}, r"aggregation\.args\.eta: .*valid number, got '0.1'"),
        ("fedadagrad", {"tau": 0}, r"aggregation\.args\.tau: .*greater than 0, got 0"),
        ("fedavgm", {"momentum": 1.0}, r"aggregation\.args\.momentum: .*less than 1.*β < 1"),
        ("fedadam", {"eta": float("nan")}, r"aggregation\.args\.eta: .*finite"),
        ("trimmed_mean", {"beta": 0.5}, r"aggregation\.args\.beta: .*less than 0\.5"),
        ("krum", {}, r"aggregation\.args\.f: .*required.*n > 2f \+ 2"),
        ("krum", {"f": 1.5}, r"aggregation\.args\.f: .*valid integer"),
        ("krum", {"f": True}, r"aggregation\.args\.f: .*valid integer"),
        ("krum", {"f": 1, "m": 0}, r"aggregation\.args\.m: .*greater than or equal to 1"),
        ("median", {"spill_dtype": "float16"}, r"'auto', 'float32' or 'float64', got 'float16'"),
        ("median", {"block_mib": 0}, r"aggregation\.args\.block_mib: .*greater than or equal to 1"),
    ],
)
def test_bad_arguments_name_the_key_and_the_allowed_values(name, args, message):
    with pytest.raises(PlanError, match=message):
        create_strategy(name, args)


def test_every_problem_is_reported_at_once():
    with pytest.raises(PlanError) as caught:
        create_strategy("fedadam", {"eta": -1, "beta_1": 2})
    assert "aggregation.args.eta" in str(caught.value)
    assert "aggregation.args.beta_1" in str(caught.value)


def test_unknown_strategy_and_non_mapping_args_are_plan_errors():
    with pytest.raises(
        PlanError, match=r"aggregation\.strategy: unknown strategy 'fedsgd'.*fedavg"
    ):
        create_strategy("fedsgd", {})
    with pytest.raises(PlanError, match=r"aggregation\.args: expected a mapping"):
        create_strategy("fedavg", [("eta", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_keeps_names_order_shapes_and_integer_tensors(tmp_path, name):
    args = {**VALID_ARGS.get(name, {})}
    if name in {"median", "trimmed_mean", "krum"}:
        args["spill_dir"] = str(tmp_path)
    strategy = create_strategy(name, args)
    rng = np.random.default_rng(1)
    model = {
        "conv.weight": np.zeros((2, 3), np.float32),
        "bn.num_batches_tracked": np.array(100, np.int64),
        "head": np.zeros(4, np.float16),
    }
    if name == "fedcurv":
        model |= fedcurv_tensors(model, {"conv.weight": np.zeros((2, 3))})
    strategy.begin_round(model, 1)
    for i in range(5):
        update = {
            n: (a + rng.normal(size=a.shape)).astype(a.dtype) if a.dtype.kind == "f" else a + 10
            for n, a in model.items()
        }
        strategy.accumulate(f"site-{i}", update, float(i + 1))
    new = strategy.finalize()
    strategy.close()
    assert list(new) == list(model)
    for key, array in model.items():
        assert new[key].dtype == array.dtype and new[key].shape == array.shape
    assert int(new["bn.num_batches_tracked"]) == 110
    assert list(tmp_path.iterdir()) == []
