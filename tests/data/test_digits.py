"""scikit-learn's digits: scaled features, a stratified and reproducible split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bastion.data.digits import load_digits
from bastion.data.errors import DataError


def test_shapes_dtypes_and_ranges() -> None:
    dataset = load_digits()
    assert dataset.name == "digits" and dataset.num_classes == 10
    assert dataset.x_train.shape == (1437, 64) and dataset.x_test.shape == (360, 64)
    assert dataset.x_train.dtype == dataset.x_test.dtype == np.float32
    assert dataset.y_train.dtype == dataset.y_test.dtype == np.int64
    for x in (dataset.x_train, dataset.x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_split_keeps_every_example_and_is_stratified() -> None:
    from sklearn.datasets import load_digits as sklearn_load_digits

    full = np.bincount(sklearn_load_digits().target)
    dataset = load_digits()
    train, test = np.bincount(dataset.y_train), np.bincount(dataset.y_test)
    np.testing.assert_array_equal(train + test, full)
    assert np.all(np.abs(test - 0.2 * full) <= 1)


def test_split_is_deterministic_and_follows_the_seed() -> None:
    first, second, other = load_digits(), load_digits(), load_digits(seed=1)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    assert not np.array_equal(first.x_train, other.x_train)


def test_images_layout_is_channel_first() -> None:
    flat, images = load_digits(), load_digits(flatten=False)
    assert images.x_train.shape == (1437, 1, 8, 8)
    np.testing.assert_array_equal(images.x_train.reshape(-1, 64), flat.x_train)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001])
def test_bad_test_fraction_is_an_error(fraction: float) -> None:
    with pytest.raises(DataError, match="test_fraction"):
        load_digits(test_fraction=fraction)


def test_importing_bastion_data_does_not_import_sklearn() -> None:
    code = "import sys, bastion.data; print('sklearn' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
