"""Partitioners: disjoint, covering, reproducible, and as skewed as their parameter asks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.data import PartitionError, dirichlet, iid, label_shards


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert np.all(np.diff(part) > 0)  # sorted, no repeats


def balanced_labels(per_class: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


def label_arrays(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 300))
    classes = draw(st.integers(1, 12))
    return np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))


@st.composite
def labels_and_parts(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    labels = label_arrays(draw)
    return labels, draw(st.integers(1, len(labels)))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 500), data=st.data(), seed=st.integers(0, 2**32))
def test_iid_is_a_balanced_disjoint_cover(n: int, data: st.DataObject, seed: int) -> None:
    num_parts = data.draw(st.integers(1, n))
    parts = iid(n, num_parts, seed)
    assert len(parts) == num_parts
    assert_disjoint_cover(parts, n)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=100, deadline=None)
@given(case=labels_and_parts(), per_part=st.integers(1, 4), seed=st.integers(0, 1000))
def test_label_shards_is_a_disjoint_cover(
    case: tuple[np.ndarray, int], per_part: int, seed: int
) -> None:
    labels, num_parts = case
    if num_parts * per_part > len(labels):
        with pytest.raises(PartitionError, match="shards"):
            label_shards(labels, num_parts, per_part, seed)
        return
    parts = label_shards(labels, num_parts, per_part, seed)
    assert len(parts) == num_parts
    assert_disjoint_cover(parts, len(labels))


@settings(max_examples=60, deadline=None)
@given(
    case=labels_and_parts(),
    alpha=st.floats(0.05, 100),
    min_size=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_dirichlet_is_a_disjoint_cover_with_min_size(
    case: tuple[np.ndarray, int], alpha: float, min_size: int, seed: int
) -> None:
    labels, num_parts = case
    num_parts = max(1, min(num_parts, len(labels) // min_size, 10))
    try:
        parts = dirichlet(labels, num_parts, alpha, seed, min_size=min_size)
    except PartitionError as exc:
        # Only an infeasible or very unlikely request may fail, and it must say so.
        assert "min_size" in str(exc)
        return
    assert len(parts) == num_parts
    assert_disjoint_cover(parts, len(labels))
    assert min(len(part) for part in parts) >= min_size


@pytest.mark.parametrize(
    "split",
    [
        lambda labels, seed: iid(len(labels), 7, seed),
        lambda labels, seed: dirichlet(labels, 7, 0.5, seed),
        lambda labels, seed: label_shards(labels, 7, 2, seed),
    ],
    ids=["iid", "dirichlet", "shards"],
)
def test_same_seed_same_parts_other_seed_other_parts(
    split: Callable[[np.ndarray, int], list[np.ndarray]],
) -> None:
    labels = balanced_labels(100)
    first, again, other = split(labels, 3), split(labels, 3), split(labels, 4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def top_class_shares(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    return np.array([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])


def test_small_alpha_gives_parts_dominated_by_few_classes() -> None:
    labels = balanced_labels(600)
    parts = dirichlet(labels, num_parts=10, alpha=0.05, seed=0)
    # Uniform parts would have a top class near 10%; most of these are mostly one class.
    assert np.median(top_class_shares(labels, parts)) > 0.6


def test_large_alpha_gives_near_uniform_parts() -> None:
    labels = balanced_labels(600)
    parts = dirichlet(labels, num_parts=10, alpha=1000.0, seed=0)
    for part in parts:
        shares = np.bincount(labels[part], minlength=10) / len(part)
        assert np.all(np.abs(shares - 0.1) < 0.03)


def test_label_shards_with_aligned_classes_gives_exactly_two_labels() -> None:
    # FedAvg's setting with equal classes: 200 shards of 300 never straddle a class boundary.
    labels = balanced_labels(6000)
    parts = label_shards(labels, num_parts=100, shards_per_part=2, seed=0)
    assert all(len(part) == 600 for part in parts)
    assert all(len(np.unique(labels[part])) <= 2 for part in parts)
    assert_disjoint_cover(parts, len(labels))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iid(3, 5, 0), "cannot split 3 examples into 5 parts"),
        (lambda: iid(0, 1, 0), "n must be at least 1"),
        (lambda: iid(10, 0, 0), "num_parts must be at least 1"),
        (lambda: iid(10, 2, -1), "seed must be at least 0"),
        (lambda: iid(10, 2.5, 0), "num_parts must be an integer"),  # type: ignore[arg-type]
        (lambda: iid(10, True, 0), "num_parts must be an integer"),
        (lambda: label_shards(np.zeros(5, int), 3, 2, 0), "cannot cut 5 examples"),
        (lambda: label_shards(np.zeros(5), 2, 2, 0), "integer class ids"),
        (lambda: label_shards(np.zeros((5, 2), int), 2, 2, 0), "1-D"),
        (lambda: label_shards(np.zeros(0, int), 2, 2, 0), "empty"),
        (lambda: dirichlet(np.zeros(50, int), 2, 0.0, 0), "alpha must be a positive"),
        (lambda: dirichlet(np.zeros(50, int), 2, float("nan"), 0), "alpha must be a positive"),
        (lambda: dirichlet(np.zeros(50, int), 2, -1.0, 0), "alpha must be a positive"),
        (lambda: dirichlet(np.zeros(50, int), 6, 1.0, 0), "at least 10 examples each"),
        (lambda: dirichlet(np.zeros(50, int), 2, 1.0, 0, min_size=0), "min_size must be"),
    ],
)
def test_invalid_arguments_are_explained(call: Callable[[], object], message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        call()


def test_unreachable_min_size_gives_up_with_advice() -> None:
    labels = balanced_labels(50, classes=2)
    with pytest.raises(PartitionError, match="raise alpha, lower min_size, or use fewer parts"):
        dirichlet(labels, num_parts=10, alpha=0.001, seed=0, min_size=10)
