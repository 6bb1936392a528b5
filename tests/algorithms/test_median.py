"""Coordinate-wise median (Yin et al. 2018) against a sort-based reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.algorithms.median import Median, MedianArgs

SHAPES = {"embedding": (7, 5), "head.bias": (3,), "gain": ()}


def reference_median(values: np.ndarray) -> np.ndarray:
    """Middle value of each column, or the mean of the two middle values."""
    ordered = np.sort(values, axis=0)
    count = ordered.shape[0]
    return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2.0


def aggregate(strategy, model, updates, weights=None):
    strategy.begin_round(model, 1)
    for i, update in enumerate(updates):
        strategy.accumulate(f"site-{i}", update, 1.0 if weights is None else weights[i])
    try:
        return strategy.finalize()
    finally:
        strategy.close()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 12), duplicates=st.integers(0, 3))
def test_matches_the_coordinatewise_median(tmp_path_factory, seed, count, duplicates):
    rng = np.random.default_rng(seed)
    model = {n: np.zeros(s) for n, s in SHAPES.items()}
    updates = [{n: rng.normal(size=s) for n, s in SHAPES.items()} for _ in range(count)]
    updates += updates[:duplicates]  # ties
    weights = [float(w) for w in rng.integers(1, 1000, len(updates))]
    strategy = Median(MedianArgs(spill_dir=str(tmp_path_factory.mktemp("spill"))))
    got = aggregate(strategy, model, updates, weights)
    for name in SHAPES:
        want = reference_median(np.stack([u[name] for u in updates]))
        np.testing.assert_array_equal(got[name], want)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    honest=st.integers(3, 9),
    attack=st.sampled_from(["scale10", "scale100", "flip", "outlier"]),
    data=st.data(),
)
def test_a_minority_of_attackers_cannot_leave_the_honest_range(seed, honest, attack, data):
    attackers = data.draw(st.integers(1, honest - 1), label="attackers")  # a strict minority
    rng = np.random.default_rng(seed)
    center = rng.normal(size=40) * 5
    good = [center + rng.normal(size=40) for _ in range(honest)]
    bad = {
        "scale10": lambda u: 10 * u,
        "scale100": lambda u: 100 * u,
        "flip": lambda u: -u,
        "outlier": lambda u: np.full_like(u, 1e12),
    }[attack]
    evil = [bad(good[i % honest]) for i in range(attackers)]
    order = rng.permutation(honest + attackers)
    updates = [{"w": (good + evil)[i]} for i in order]
    got = aggregate(Median(), {"w": np.zeros(40)}, updates, [1.0] * len(order))["w"]
    stacked = np.stack(good)
    assert np.all(got >= stacked.min(axis=0)) and np.all(got <= stacked.max(axis=0))


def test_example_counts_do_not_move_the_median():
    model = {"w": np.zeros(3)}
    updates = [{"w": np.full(3, v)} for v in (1.0, 2.0, 3.0)]
    assert aggregate(Median(), model, updates, [1.0, 1.0, 1e9])["w"].tolist() == [2.0] * 3


def test_blocks_cover_every_column(tmp_path):
    rng = np.random.default_rng(7)
    model = {"big": np.zeros(70_000, np.float32), "small": np.zeros(5, np.float32)}
    updates = [
        {n: rng.normal(size=a.shape).astype(np.float32) for n, a in model.items()} for _ in range(8)
    ]
    got = aggregate(Median(MedianArgs(spill_dir=str(tmp_path), block_mib=1)), model, updates)
    for name in model:  # 8 rows × 70k float64 columns is more than one 1 MiB block
        want = reference_median(np.stack([u[name].astype(np.float64) for u in updates]))
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], want.astype(np.float32))
