"""Coordinate-wise β-trimmed mean (Yin et al. 2018, Definition 2) against a reference."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.algorithms.trimmed_mean import TrimmedMean, TrimmedMeanArgs, trim_count

SHAPES = {"w": (4, 6), "b": (6,)}


def reference_trimmed_mean(values: np.ndarray, trim: int) -> np.ndarray:
    ordered = np.sort(values, axis=0)
    return ordered[trim : ordered.shape[0] - trim].mean(axis=0)


def aggregate(strategy, model, updates, weights=None):
    strategy.begin_round(model, 3)
    for i, update in enumerate(updates):
        strategy.accumulate(f"site-{i}", update, 1.0 if weights is None else weights[i])
    try:
        return strategy.finalize()
    finally:
        strategy.close()


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 12),
    beta=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.45, 0.49]),
    duplicates=st.integers(0, 3),
)
def test_matches_the_trimmed_mean(seed, count, beta, duplicates):
    rng = np.random.default_rng(seed)
    updates = [{n: rng.normal(size=s) for n, s in SHAPES.items()} for _ in range(count)]
    updates += updates[:duplicates]
    n = len(updates)
    got = aggregate(
        TrimmedMean(TrimmedMeanArgs(beta=beta)), {"w": np.zeros((4, 6)), "b": np.zeros(6)}, updates
    )
    trim = int(math.floor(round(beta * 100) * n / 100))  # β is a whole percentage here
    for name in SHAPES:
        want = reference_trimmed_mean(np.stack([u[name] for u in updates]), trim)
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=1e-12)


def test_trim_count_reads_beta_as_written():
    assert trim_count(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in binary
    assert trim_count(0.1, 9) == 0
    assert trim_count(0.49, 10) == 4


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    honest=st.integers(4, 10),
    attackers=st.integers(1, 3),
    attack=st.sampled_from(["scale10", "scale100", "flip", "outlier"]),
)
def test_trimming_at_least_the_attackers_keeps_the_honest_range(seed, honest, attackers, attack):
    rng = np.random.default_rng(seed)
    n = honest + attackers
    beta = min(0.49, (attackers + 0.5) / n)  # trims at least `attackers` from each end
    center = rng.normal(size=30) * 5
    good = [center + rng.normal(size=30) for _ in range(honest)]
    bad = {
        "scale10": lambda u: 10 * u,
        "scale100": lambda u: 100 * u,
        "flip": lambda u: -u,
        "outlier": lambda u: np.full_like(u, -1e12),
    }[attack]
    updates = [{"w": u} for u in good + [bad(good[0]) for _ in range(attackers)]]
    rng.shuffle(updates)
    assert attackers <= trim_count(beta, n) and 2 * trim_count(beta, n) < n
    got = aggregate(TrimmedMean(TrimmedMeanArgs(beta=beta)), {"w": np.zeros(30)}, updates)["w"]
    stacked = np.stack(good)
    assert np.all(got >= stacked.min(axis=0) - 1e-9) and np.all(got <= stacked.max(axis=0) + 1e-9)


def test_example_counts_are_ignored():
    updates = [{"w": np.array([v])} for v in (1.0, 2.0, 3.0, 4.0)]
    got = aggregate(
        TrimmedMean(TrimmedMeanArgs(beta=0.25)), {"w": np.zeros(1)}, updates, [1, 1, 1, 1e6]
    )
    assert got["w"].tolist() == [2.5]
