"""Partitioners: how a dataset's examples are dealt out to collaborators.

Each returns one sorted array of example indices per part. The parts are disjoint, and
the same arguments and seed always give the same parts, so every collaborator process
can compute the whole partition on its own and take its part.
"""

from __future__ import annotations

import numbers

import numpy as np

from bastion.data.errors import PartitionError

# Dirichlet draws are retried at most this often to give every part ``min_size`` examples.
DIRICHLET_MAX_ATTEMPTS = 1000


def iid(n: int, num_parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_parts`` parts, sizes differing by at most one."""
    _check_int("n", n, minimum=1)
    _check_int("num_parts", num_parts, minimum=1)
    _check_int("seed", seed, minimum=0)
    if num_parts > n:
        raise PartitionError(
            f"cannot split {n} examples into {num_parts} parts: every part needs at least "
            "one example; use fewer parts"
        )
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, num_parts)]


def dirichlet(
    labels: np.ndarray, num_parts: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Label skew: each class is dealt out in proportions drawn from Dir(alpha, ..., alpha).

    Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data distribution for
    federated visual classification", in the per-class form of Yurochkin et al. 2019. Small
    ``alpha`` (0.1) gives parts dominated by a few classes; large ``alpha`` (100) is near IID.
    Draws are repeated until every part holds at least ``min_size`` examples.
    """
    labels = _check_labels(labels)
    _check_int("num_parts", num_parts, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_int("min_size", min_size, minimum=1)
    if not (isinstance(alpha, numbers.Real) and np.isfinite(alpha) and alpha > 0):
        raise PartitionError(f"alpha must be a positive number, got {alpha!r}")
    if num_parts * min_size > len(labels):
        raise PartitionError(
            f"cannot give {num_parts} parts at least {min_size} examples each from "
            f"{len(labels)} examples: lower min_size or use fewer parts"
        )
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    class_sizes = np.array([len(members) for members in by_class])
    concentration = np.full(num_parts, float(alpha))
    for _ in range(DIRICHLET_MAX_ATTEMPTS):
        # counts[c, j]: how many examples of class c part j gets.
        counts = _split_counts(class_sizes, rng.dirichlet(concentration, size=len(by_class)))
        if int(counts.sum(axis=0).min()) >= min_size:
            starts = np.cumsum(counts, axis=1) - counts
            return [_gather(by_class, starts[:, j], counts[:, j]) for j in range(num_parts)]
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) draw in {DIRICHLET_MAX_ATTEMPTS} gave each of {num_parts} "
        f"parts at least {min_size} of {len(labels)} examples: raise alpha, lower min_size, "
        "or use fewer parts"
    )


def label_shards(
    labels: np.ndarray, num_parts: int, shards_per_part: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological non-IID: sort by label, cut into shards, deal ``shards_per_part`` to each part.

    McMahan et al. 2017, "Communication-efficient learning of deep networks from
    decentralized data" (FedAvg): MNIST in 200 shards of 300, two per client, so most clients
    see two digits. A shard can straddle a class boundary, so a part may hold a few more.
    """
    labels = _check_labels(labels)
    _check_int("num_parts", num_parts, minimum=1)
    _check_int("shards_per_part", shards_per_part, minimum=1)
    _check_int("seed", seed, minimum=0)
    num_shards = num_parts * shards_per_part
    if num_shards > len(labels):
        raise PartitionError(
            f"cannot cut {len(labels)} examples into {num_parts} parts x {shards_per_part} "
            "shards: every shard needs at least one example; use fewer parts or shards"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_parts, shards_per_part)
    return [np.sort(np.concatenate([shards[s] for s in hand])) for hand in dealt]


def _split_counts(class_sizes: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """Split each class ``c`` into parts of about ``proportions[c, j] * class_sizes[c]``."""
    totals = class_sizes[:, None]
    cuts = (np.cumsum(proportions, axis=1)[:, :-1] * totals).astype(np.int64)
    return np.diff(cuts, axis=1, prepend=0, append=totals)


def _gather(by_class: list[np.ndarray], starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One part: ``counts[c]`` examples of each class ``c`` from position ``starts[c]`` on."""
    chunks = [m[s : s + c] for m, s, c in zip(by_class, starts, counts, strict=True)]
    return np.sort(np.concatenate(chunks))


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PartitionError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise PartitionError(f"{name} must be at least {minimum}, got {value}")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise PartitionError(
            f"labels must be a 1-D array of integer class ids, got dtype {labels.dtype} "
            f"and shape {labels.shape}"
        )
    if len(labels) == 0:
        raise PartitionError("labels is empty: there is nothing to partition")
    return labels
