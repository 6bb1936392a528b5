"""make_shard: each collaborator's part, and validation parts that add up to the test set."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.data import Dataset, PartitionError, make_shard
from bastion.data.digits import load_digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def rows_sorted(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_validation_parts_are_exactly_the_test_set(digits: Dataset, method: str) -> None:
    shards = [make_shard(digits, i, 5, method=method) for i in range(5)]
    x_valid = np.concatenate([s.x_valid for s in shards])
    y_valid = np.concatenate([s.y_valid for s in shards])
    assert len(y_valid) == len(digits.y_test)
    np.testing.assert_array_equal(rows_sorted(x_valid), rows_sorted(digits.x_test))
    np.testing.assert_array_equal(np.sort(y_valid), np.sort(digits.y_test))


def test_weighted_validation_accuracy_equals_whole_test_accuracy(digits: Dataset) -> None:
    # A fixed nearest-centroid classifier stands in for a trained federated model.
    centroids = np.stack([digits.x_train[digits.y_train == c].mean(0) for c in range(10)])

    def predict(x: np.ndarray) -> np.ndarray:
        return np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)

    shards = [make_shard(digits, i, 7, method="dirichlet", alpha=0.3) for i in range(7)]
    accuracies = [float(np.mean(predict(s.x_valid) == s.y_valid)) for s in shards]
    weights = [s.valid_count for s in shards]
    whole = float(np.mean(predict(digits.x_test) == digits.y_test))
    assert np.average(accuracies, weights=weights) == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_train_parts_are_disjoint_and_cover_the_train_set(digits: Dataset, method: str) -> None:
    shards = [make_shard(digits, i, 4, method=method, seed=2) for i in range(4)]
    assert sum(s.train_count for s in shards) == len(digits.y_train)
    x_train = np.concatenate([s.x_train for s in shards])
    np.testing.assert_array_equal(rows_sorted(x_train), rows_sorted(digits.x_train))


def test_shard_keeps_dtypes_shapes_and_classes(digits: Dataset) -> None:
    shard = make_shard(digits, 0, 3)
    assert shard.x_train.dtype == np.float32 and shard.y_train.dtype == np.int64
    assert shard.x_train.shape[1:] == digits.x_train.shape[1:]
    assert shard.num_classes == 10
    assert shard.x_train.flags.c_contiguous


def test_every_process_computes_the_same_shard(digits: Dataset) -> None:
    first, again = make_shard(digits, 2, 5, "dirichlet", seed=9), load_digits()
    second = make_shard(again, 2, 5, "dirichlet", seed=9)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_valid, second.y_valid)


def test_shards_method_limits_labels_per_collaborator(digits: Dataset) -> None:
    for i in range(10):
        shard = make_shard(digits, i, 10, method="shards", shards_per_part=2)
        assert len(np.unique(shard.y_train)) <= 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"index": 5, "count": 5}, "index 5 is outside 0..4"),
        ({"index": -1, "count": 5}, "index -1 is outside 0..4"),
        ({"index": 0, "count": 0}, "count must be a positive integer"),
        ({"index": 0.5, "count": 2}, "index must be an integer"),
        ({"index": 0, "count": 2, "method": "random"}, "use one of iid, dirichlet, shards"),
        ({"index": 0, "count": 400}, "test split of 'digits' has 360 examples, fewer than"),
        (
            {"index": 0, "count": 200, "method": "dirichlet", "min_size": 10},
            "train split of 'digits': cannot give 200 parts at least 10 examples",
        ),
    ],
)
def test_invalid_requests_are_explained(
    digits: Dataset, args: dict[str, object], message: str
) -> None:
    with pytest.raises(PartitionError, match=message):
        make_shard(digits, **args)  # type: ignore[arg-type]
