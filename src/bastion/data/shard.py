"""One collaborator's shard of a dataset, computed identically in every collaborator process."""

from __future__ import annotations

import numbers

import numpy as np

from bastion.data import partition
from bastion.data.errors import PartitionError
from bastion.data.types import Dataset, DataShard

METHODS = ("iid", "dirichlet", "shards")


def make_shard(
    dataset: Dataset,
    index: int,
    count: int,
    method: str = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_part: int = 2,
    min_size: int = 10,
) -> DataShard:
    """Collaborator ``index`` of ``count``'s part of ``dataset``.

    The train split is partitioned by ``method`` (``iid``; ``dirichlet`` with ``alpha`` and
    ``min_size``; ``shards`` with ``shards_per_part``). The test split is always split IID
    into disjoint parts that cover it, so the example-weighted mean of the collaborators'
    validation accuracies is exactly the accuracy on the whole test set.
    """
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise PartitionError(f"collaborator count must be a positive integer, got {count!r}")
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise PartitionError(f"collaborator index must be an integer, got {index!r}")
    if not 0 <= index < count:
        raise PartitionError(f"collaborator index {index} is outside 0..{count - 1}")
    if method not in METHODS:
        raise PartitionError(
            f"unknown partition method '{method}': use one of {', '.join(METHODS)}"
        )
    if len(dataset.y_test) < count:
        raise PartitionError(
            f"the test split of '{dataset.name}' has {len(dataset.y_test)} examples, fewer than "
            f"the {count} collaborators: each needs at least one validation example"
        )
    try:
        train_parts = _partition_train(
            dataset, count, method, seed, alpha, shards_per_part, min_size
        )
    except PartitionError as exc:
        raise PartitionError(f"partitioning the train split of '{dataset.name}': {exc}") from exc
    valid_part = partition.iid(len(dataset.y_test), count, seed)[index]
    train_part = train_parts[index]
    return DataShard(
        x_train=_take(dataset.x_train, train_part),
        y_train=_take(dataset.y_train, train_part),
        x_valid=_take(dataset.x_test, valid_part),
        y_valid=_take(dataset.y_test, valid_part),
        num_classes=dataset.num_classes,
    )


def _partition_train(
    dataset: Dataset,
    count: int,
    method: str,
    seed: int,
    alpha: float,
    shards_per_part: int,
    min_size: int,
) -> list[np.ndarray]:
    if method == "dirichlet":
        return partition.dirichlet(dataset.y_train, count, alpha, seed, min_size=min_size)
    if method == "shards":
        return partition.label_shards(dataset.y_train, count, shards_per_part, seed)
    return partition.iid(len(dataset.y_train), count, seed)


def _take(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array[indices])
