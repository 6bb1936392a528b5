"""FedAvgM against Hsu et al. 2019's server-momentum update, written out here."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.algorithms.fedavg import FedAvg
from bastion.algorithms.fedavgm import FedAvgM, FedAvgMArgs

SHAPES = {"conv.weight": (2, 3, 3), "conv.bias": (2,)}


def random_rounds(seed: int, clients: int, count: int, start):
    rng = np.random.default_rng(seed)
    return [
        (
            [{n: a + rng.normal(0, 1, a.shape) for n, a in start.items()} for _ in range(clients)],
            [float(w) for w in rng.integers(1, 50, clients)],
        )
        for _ in range(count)
    ]


def run(strategy, model, rounds, first_round=1):
    history = []
    for number, (updates, weights) in enumerate(rounds, start=first_round):
        strategy.begin_round(model, number)
        for i, (update, weight) in enumerate(zip(updates, weights, strict=True)):
            strategy.accumulate(f"site-{i}", update, weight)
        model = strategy.finalize()
        history.append(model)
    return history


def reference(server_lr, momentum, start, rounds):
    """v ← βv + (w − avg); w ← w − ηv, in float64."""
    w = {n: a.astype(np.float64) for n, a in start.items()}
    v = {n: np.zeros_like(a) for n, a in w.items()}
    history = []
    for updates, weights in rounds:
        for n in w:
            average = sum(k * u[n] for u, k in zip(updates, weights, strict=True)) / sum(weights)
            v[n] = momentum * v[n] + (w[n] - average)
            w[n] = w[n] - server_lr * v[n]
        history.append({n: a.copy() for n, a in w.items()})
    return history


@settings(max_examples=40, deadline=None)
@given(
    server_lr=st.floats(0.01, 2.0),
    momentum=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 5),
    count=st.integers(1, 6),
)
def test_every_round_matches_the_momentum_update(server_lr, momentum, seed, clients, count):
    start = {n: np.random.default_rng(seed + 1).normal(size=s) for n, s in SHAPES.items()}
    rounds = random_rounds(seed, clients, count, start)
    got = run(FedAvgM(FedAvgMArgs(server_lr=server_lr, momentum=momentum)), start, rounds)
    for round_got, round_want in zip(
        got, reference(server_lr, momentum, start, rounds), strict=True
    ):
        for name in SHAPES:
            np.testing.assert_allclose(round_got[name], round_want[name], rtol=1e-9, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4))
def test_without_momentum_and_unit_rate_it_is_fedavg(seed, count):
    start = {n: np.random.default_rng(seed).normal(size=s) for n, s in SHAPES.items()}
    rounds = random_rounds(seed, 3, count, start)
    got = run(FedAvgM(FedAvgMArgs(server_lr=1.0, momentum=0.0)), start, rounds)
    want = run(FedAvg(), start, rounds)
    for round_got, round_want in zip(got, want, strict=True):
        for name in SHAPES:
            np.testing.assert_allclose(round_got[name], round_want[name], rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), split=st.integers(1, 4))
def test_resume_from_state_dict_is_bit_identical(seed, split):
    start = {
        n: np.random.default_rng(seed).normal(size=s).astype(np.float32) for n, s in SHAPES.items()
    }
    rounds = random_rounds(seed, 3, 5, start)
    straight = run(FedAvgM(), start, rounds)
    first = FedAvgM()
    before = run(first, start, rounds[:split])
    resumed = FedAvgM()
    resumed.load_state_dict({k: a.copy() for k, a in first.state_dict().items()})
    after = run(resumed, before[-1], rounds[split:], first_round=split + 1)
    for got, want in zip(before + after, straight, strict=True):
        for name in SHAPES:
            assert got[name].tobytes() == want[name].tobytes()


def test_counters_are_averaged_not_accelerated():
    model = {"w": np.zeros(2, np.float32), "num_batches_tracked": np.array(4, np.int64)}
    updates = [
        {"w": np.ones(2, np.float32), "num_batches_tracked": np.array(8, np.int64)},
        {"w": np.ones(2, np.float32), "num_batches_tracked": np.array(9, np.int64)},
    ]
    strategy = FedAvgM()
    (new,) = run(strategy, model, [(updates, [1.0, 1.0])])
    assert new["num_batches_tracked"].dtype == np.int64
    assert int(new["num_batches_tracked"]) == 8  # rint(8.5), half to even
    assert sorted(strategy.state_dict()) == ["momentum/w"]
