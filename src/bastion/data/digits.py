"""scikit-learn's bundled digits (Alpaydin & Kaynak 1998): 1,797 8x8 images, no download."""

from __future__ import annotations

import numpy as np

from bastion.data.errors import DataError
from bastion.data.types import Dataset

SIDE = 8
NUM_CLASSES = 10


def load_digits(flatten: bool = True, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Digits as float32 features in [0, 1] and int64 labels, split train/test by class.

    The split is stratified and seeded, so every process that loads it gets the same one.
    Features are ``(N, 64)``; ``flatten=False`` gives channel-first images ``(N, 1, 8, 8)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"digits: test_fraction must be between 0 and 1, got {test_fraction}")
    # scikit-learn is imported here so that `import bastion.data` stays cheap.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    features = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16)).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            features, labels, test_size=test_fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise DataError(f"digits: cannot split with test_fraction={test_fraction}: {exc}") from exc
    shape = (-1, SIDE * SIDE) if flatten else (-1, 1, SIDE, SIDE)
    return Dataset(
        name="digits",
        x_train=np.ascontiguousarray(x_train).reshape(shape),
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test).reshape(shape),
        y_test=np.asarray(y_test, dtype=np.int64),
        num_classes=NUM_CLASSES,
    )
