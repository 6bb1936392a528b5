"""FedAdam, FedYogi and FedAdagrad against Reddi et al. 2021, Algorithm 2, written out here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from bastion.algorithms.errors import AggregationError
from bastion.algorithms.fedadagrad import FedAdagrad, FedAdagradArgs
from bastion.algorithms.fedadam import FedAdam, FedAdamArgs
from bastion.algorithms.fedopt import FedOpt
from bastion.algorithms.fedyogi import FedYogi, FedYogiArgs

KINDS = ("adam", "yogi", "adagrad")
SHAPES = {"layer.weight": (3, 4), "layer.bias": (4,), "scale": ()}


def build(kind: str, eta: float, beta_1: float, beta_2: float, tau: float) -> FedOpt:
    if kind == "adam":
        return FedAdam(FedAdamArgs(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau))
    if kind == "yogi":
        return FedYogi(FedYogiArgs(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau))
    return FedAdagrad(FedAdagradArgs(eta=eta, beta_1=beta_1, tau=tau))


def reference_rounds(kind, eta, beta_1, beta_2, tau, x0, rounds):
    """Algorithm 2 of the paper, one tensor at a time, in float64."""
    x = {n: a.astype(np.float64) for n, a in x0.items()}
    m = {n: np.zeros_like(a) for n, a in x.items()}
    v = {n: np.full_like(a, tau**2) for n, a in x.items()}
    history = []
    for updates, weights in rounds:
        total = sum(weights)
        for n in x:
            delta = sum(w * (u[n] - x[n]) for u, w in zip(updates, weights, strict=True)) / total
            m[n] = beta_1 * m[n] + (1 - beta_1) * delta
            if kind == "adagrad":
                v[n] = v[n] + delta**2
            elif kind == "adam":
                v[n] = beta_2 * v[n] + (1 - beta_2) * delta**2
            else:
                v[n] = v[n] - (1 - beta_2) * delta**2 * np.sign(v[n] - delta**2)
            x[n] = x[n] + eta * m[n] / (np.sqrt(v[n]) + tau)
        history.append({n: a.copy() for n, a in x.items()})
    return history


def random_rounds(seed: int, clients: int, count: int, start: dict[str, np.ndarray]):
    """Updates scattered around the start point, with positive example counts."""
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(count):
        updates = [
            {n: a + rng.normal(0.0, 0.5, a.shape) for n, a in start.items()} for _ in range(clients)
        ]
        weights = [float(w) for w in rng.integers(1, 100, clients)]
        rounds.append((updates, weights))
    return rounds


def run(strategy: FedOpt, model, rounds, first_round: int = 1):
    history = []
    for number, (updates, weights) in enumerate(rounds, start=first_round):
        strategy.begin_round(model, number)
        for i, (update, weight) in enumerate(zip(updates, weights, strict=True)):
            strategy.accumulate(f"site-{i}", update, weight)
        model = strategy.finalize()
        history.append(model)
    return history


hyper = st.fixed_dictionaries(
    {
        "eta": st.floats(1e-3, 1.0),
        "beta_1": st.floats(0.0, 0.99),
        "beta_2": st.floats(0.0, 0.999),
        "tau": st.floats(1e-9, 1e-1),
    }
)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    params=hyper,
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 5),
    count=st.integers(1, 6),
)
def test_every_round_matches_algorithm_2(kind, params, seed, clients, count):
    start = {n: np.random.default_rng(seed + 1).normal(size=s) for n, s in SHAPES.items()}
    rounds = random_rounds(seed, clients, count, start)
    got = run(build(kind, **params), start, rounds)
    want = reference_rounds(kind, **params, x0=start, rounds=rounds)
    for round_got, round_want in zip(got, want, strict=True):
        assert list(round_got) == list(SHAPES)
        for name in SHAPES:
            assert round_got[name].dtype == np.float64
            np.testing.assert_allclose(round_got[name], round_want[name], rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    params=hyper,
    seed=st.integers(0, 2**32 - 1),
    split=st.integers(1, 4),
)
def test_resume_from_checkpointed_state_is_bit_identical(kind, params, seed, split):
    start = {
        n: np.random.default_rng(seed).normal(size=s).astype(np.float32) for n, s in SHAPES.items()
    }
    rounds = random_rounds(seed, 3, 5, start)
    straight = run(build(kind, **params), start, rounds)

    first = build(kind, **params)
    before = run(first, start, rounds[:split])
    saved = safetensors_load(safetensors_save(first.state_dict()))  # the checkpoint format
    resumed = build(kind, **params)
    resumed.load_state_dict(saved)
    after = run(resumed, before[-1], rounds[split:], first_round=split + 1)

    for got, want in zip(before + after, straight, strict=True):
        for name in SHAPES:
            assert got[name].dtype == np.float32
            assert got[name].tobytes() == want[name].tobytes()


def test_state_dict_holds_both_moments_per_float_tensor():
    strategy = FedAdam()
    model = {"w": np.zeros(3, np.float32), "steps": np.array(5, np.int64)}
    run(strategy, model, [([{"w": np.ones(3, np.float32), "steps": np.array(6, np.int64)}], [1.0])])
    state = strategy.state_dict()
    assert sorted(state) == ["m/w", "v/w"]
    assert all(a.dtype == np.float64 for a in state.values())


def test_integer_tensors_are_averaged_and_keep_their_dtype():
    model = {"w": np.zeros(2, np.float32), "num_batches_tracked": np.array(10, np.int64)}
    updates = [
        {"w": np.ones(2, np.float32), "num_batches_tracked": np.array(20, np.int64)},
        {"w": np.ones(2, np.float32), "num_batches_tracked": np.array(31, np.int64)},
    ]
    for kind in KINDS:
        (new,) = run(build(kind, 0.1, 0.9, 0.99, 1e-3), model, [(updates, [1.0, 3.0])])
        assert new["num_batches_tracked"].dtype == np.int64
        assert int(new["num_batches_tracked"]) == round((20 * 1 + 31 * 3) / 4)
        assert new["w"].dtype == np.float32


def test_step_applies_one_update_from_a_given_pseudo_gradient():
    strategy = FedAdagrad(FedAdagradArgs(eta=0.5, beta_1=0.0, tau=1e-3))
    x = {"p": np.array([1.0, -2.0])}
    delta = {"p": np.array([0.5, -4.0])}
    new = strategy.step(x, delta)
    v = 1e-6 + delta["p"] ** 2
    np.testing.assert_allclose(new["p"], x["p"] + 0.5 * delta["p"] / (np.sqrt(v) + 1e-3))
    assert x["p"].tolist() == [1.0, -2.0]


def test_loading_state_for_another_model_is_refused():
    trained = FedYogi()
    run(trained, {"a": np.zeros(2)}, [([{"a": np.ones(2)}], [1.0])])
    resumed = FedYogi()
    resumed.load_state_dict(trained.state_dict())
    with pytest.raises(AggregationError, match="does not match the model"):
        resumed.begin_round({"a": np.zeros(3)}, 2)
    with pytest.raises(AggregationError, match="does not match the model"):
        resumed.begin_round({"b": np.zeros(2)}, 2)


def test_malformed_state_is_refused():
    with pytest.raises(AggregationError, match="unexpected entry 'momentum/a'"):
        FedAdam().load_state_dict({"momentum/a": np.zeros(2)})
    with pytest.raises(AggregationError, match="incomplete"):
        FedAdam().load_state_dict({"m/a": np.zeros(2)})
