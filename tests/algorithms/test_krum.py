"""Krum and Multi-Krum (Blanchard et al. 2017) against a direct reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.algorithms.errors import AggregationError
from bastion.algorithms.krum import Krum, KrumArgs, pairwise_squared_distances


def reference_scores(points: np.ndarray, f: int) -> np.ndarray:
    """Score of i: sum of squared distances to its n − f − 2 nearest other points."""
    n = len(points)
    scores = []
    for i in range(n):
        distances = sorted(float(np.sum((points[i] - points[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(distances[: n - f - 2]))
    return np.array(scores)


def aggregate(strategy, updates, model=None):
    model = model if model is not None else {n: np.zeros_like(a) for n, a in updates[0].items()}
    strategy.begin_round(model, 1)
    for i, update in enumerate(updates):
        strategy.accumulate(f"site-{i}", update, 1.0)
    try:
        return strategy.finalize()
    finally:
        strategy.close()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    f=st.integers(0, 3),
    extra=st.integers(1, 4),
    duplicates=st.integers(0, 2),
    data=st.data(),
)
def test_selects_the_best_scored_updates_and_averages_them(seed, f, extra, duplicates, data):
    rng = np.random.default_rng(seed)
    count = 2 * f + 2 + extra
    distinct = count - duplicates
    rows = [rng.normal(size=9) * rng.choice([1.0, 10.0]) for _ in range(distinct)]
    rows += [rows[i % distinct] for i in range(duplicates)]  # exact ties
    m = data.draw(st.integers(1, count - f), label="m")
    strategy = Krum(KrumArgs(f=f, m=m))
    got = aggregate(strategy, [{"a": r[:4].reshape(2, 2), "b": r[4:]} for r in rows])

    chosen = [int(name.removeprefix("site-")) for name in strategy.selected]
    assert len(set(chosen)) == m
    scores = reference_scores(np.stack(rows), f)
    np.testing.assert_allclose(np.sort(scores[chosen]), np.sort(scores)[:m], rtol=1e-9, atol=1e-9)
    mean = np.mean([rows[i] for i in chosen], axis=0)
    np.testing.assert_allclose(got["a"].reshape(-1), mean[:4], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["b"], mean[4:], rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    f=st.integers(1, 4),
    extra=st.integers(1, 3),
    attack=st.sampled_from(["scale10", "scale100", "flip", "outlier", "colluding"]),
    multi=st.booleans(),
)
def test_picks_honest_updates_when_f_attackers_are_present(seed, f, extra, attack, multi):
    rng = np.random.default_rng(seed)
    honest = f + 2 + extra  # n = honest + f > 2f + 2
    center = rng.normal(size=20) * 10
    good = [center + rng.normal(size=20) for _ in range(honest)]
    evil = {
        "scale10": lambda i: 10 * good[i % honest],
        "scale100": lambda i: 100 * good[i % honest],
        "flip": lambda i: -good[i % honest],
        "outlier": lambda i: np.full(20, 1e9 * (i + 1)),
        "colluding": lambda i: center + 50.0,  # identical attackers, close to each other
    }[attack]
    updates = [("honest", g) for g in good] + [("attacker", evil(i)) for i in range(f)]
    order = rng.permutation(len(updates))
    shuffled = [updates[i] for i in order]
    m = honest - f if multi else 1
    strategy = Krum(KrumArgs(f=f, m=m))
    aggregate(strategy, [{"w": vector} for _, vector in shuffled])
    picked = [shuffled[int(name.removeprefix("site-"))][0] for name in strategy.selected]
    assert picked == ["honest"] * m


def test_equal_scores_go_to_the_earliest_arrival():
    corners = [np.eye(4)[i] for i in range(4)]  # all pairwise distances are 2, exactly
    strategy = Krum(KrumArgs(f=0))
    got = aggregate(strategy, [{"w": c} for c in corners])
    assert strategy.selected == ["site-0"]
    assert got["w"].tolist() == corners[0].tolist()


def test_identical_updates_are_returned_unchanged():
    update = {"w": np.array([0.1, -2.5, 3.0], np.float32), "n": np.array(7, np.int64)}
    got = aggregate(Krum(KrumArgs(f=1, m=3)), [update] * 5)
    assert got["w"].tobytes() == update["w"].tobytes()
    assert got["n"].dtype == np.int64 and int(got["n"]) == 7


def test_too_few_updates_for_f_is_refused_with_the_numbers():
    updates = [{"w": np.full(2, float(i))} for i in range(6)]
    with pytest.raises(AggregationError, match=r"f=2 needs more than 2f\+2=6 updates, got 6"):
        aggregate(Krum(KrumArgs(f=2)), updates)


def test_averaging_more_than_n_minus_f_is_refused():
    updates = [{"w": np.full(2, float(i))} for i in range(5)]
    with pytest.raises(AggregationError, match="m=5 .* n-f=4"):
        aggregate(Krum(KrumArgs(f=1, m=5)), updates)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 8), width=st.integers(1, 50))
def test_blockwise_distances_equal_direct_ones(seed, count, width):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(count, width)) * rng.choice([1e-3, 1.0, 1e3])
    want = ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    block_bytes = 8 * count * int(rng.integers(1, width + 1))  # blocks of 1..width columns
    got = pairwise_squared_distances(rows, block_bytes)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * float(want.max(initial=1.0)))
    assert np.all(np.diag(got) == 0) and np.array_equal(got, got.T)
