"""Reading a site's own data files: CSV and Parquet tables, image folders, NumPy and
safetensors arrays.

A real site trains on all of its own data, which never leaves it. The plan names the
format and how to read it (``data.loader`` and ``data.args``, e.g. the label column); the
site says where its files are (``bastion.data.site``). Validation data is a second file or
folder (``valid``), or a seeded fraction of the training file (``valid_fraction``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bastion.data.errors import DataError
from bastion.data.types import DataShard
from bastion.errors import MissingDependency
from bastion.spec.data import FILE_LOADERS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DEFAULT_VALID_FRACTION = 0.2

Table = tuple[np.ndarray, np.ndarray]


def load_site_shard(
    loader: str, train: Path, valid: Path | None, args: Mapping[str, Any]
) -> DataShard:
    """The whole of a site's data as one shard: ``train`` (and ``valid``) read by ``loader``.

    ``args`` are the plan's ``data.args`` merged with the site's own (e.g. ``valid_fraction``).
    """
    options = dict(args)
    valid_fraction = float(options.pop("valid_fraction", DEFAULT_VALID_FRACTION))
    seed = int(options.pop("seed", 0))
    num_classes = options.pop("num_classes", None)
    read = _reader(loader)
    x_train, y_train = read(train, options)
    if valid is not None:
        x_valid, y_valid = read(valid, options)
    else:
        x_train, y_train, x_valid, y_valid = _split(x_train, y_train, valid_fraction, seed, train)
    classes = int(num_classes) if num_classes is not None else _count_classes(y_train, y_valid)
    for y, where in ((y_train, train), (y_valid, valid or train)):
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(
                f"{where}: labels must be 0..{classes - 1} (data.args.num_classes={classes}); "
                f"found {int(y.min())}..{int(y.max())}"
            )
    if x_valid.shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"{valid}: examples have shape {x_valid.shape[1:]}, the training data's "
            f"{x_train.shape[1:]}"
        )
    return DataShard(x_train, y_train, x_valid, y_valid, classes)


def _reader(loader: str) -> Callable[[Path, dict[str, Any]], Table]:
    readers: dict[str, Callable[[Path, dict[str, Any]], Table]] = {
        "csv": read_csv,
        "parquet": read_parquet,
        "image_folder": read_image_folder,
        "arrays": read_arrays,
    }
    if loader not in readers:
        raise DataError(f"unknown file loader {loader!r}; use one of {', '.join(FILE_LOADERS)}")
    return readers[loader]


def _label_column(options: Mapping[str, Any], where: Path) -> str:
    label = options.get("label")
    if not isinstance(label, str) or not label:
        raise DataError(f"{where}: a table needs data.args.label, the name of its label column")
    return label


def _columns(names: list[str], options: Mapping[str, Any], where: Path) -> tuple[str, list[str]]:
    label = _label_column(options, where)
    if label not in names:
        raise DataError(f"{where}: no label column {label!r}; its columns are {names[:20]}")
    features = options.get("features")
    if features is None:
        features = [n for n in names if n != label]
    missing = [f for f in features if f not in names]
    if missing:
        raise DataError(f"{where}: no feature columns {missing[:10]}; its columns are {names[:20]}")
    if not features:
        raise DataError(f"{where}: the table has no feature columns besides {label!r}")
    return label, list(features)


def read_csv(path: Path, options: Mapping[str, Any]) -> Table:
    """A CSV file with a header row; numeric features, an integer label column."""
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=str(options.get("delimiter", ",")))
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; it needs a header row")
        names = [h.strip() for h in header]
        label, features = _columns(names, options, path)
        where = {name: i for i, name in enumerate(names)}
        columns = [where[f] for f in features]
        x_rows: list[list[float]] = []
        y_rows: list[int] = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise DataError(
                    f"{path}, line {line}: {len(row)} fields, the header has {len(names)}"
                )
            try:
                x_rows.append([float(row[i]) for i in columns])
                y_rows.append(_label(row[where[label]]))
            except ValueError as exc:
                raise DataError(f"{path}, line {line}: {exc}") from None
    return np.asarray(x_rows, np.float32).reshape(len(x_rows), len(columns)), np.asarray(
        y_rows, np.int64
    )


def _label(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"label {text!r} is not an integer class")
    return int(value)


def read_parquet(path: Path, options: Mapping[str, Any]) -> Table:
    """A Parquet file: numeric feature columns and an integer label column (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise MissingDependency("pyarrow", "parquet", f"reading {path}") from None
    if not path.is_file():
        raise DataError(f"{path}: no such Parquet file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    label, features = _columns(table.column_names, options, path)
    try:
        x = np.column_stack([table.column(f).to_numpy().astype(np.float32) for f in features])
        y = table.column(label).to_numpy()
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: {exc}") from None
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{path}: label column {label!r} holds values that are not classes")
        y = y.astype(np.int64)
    return x, y.astype(np.int64)


def read_image_folder(path: Path, options: Mapping[str, Any]) -> Table:
    """``path/CLASS/*.png``: one folder per class, classes in ``data.args.classes`` order
    (default: the folder names, sorted); images resized to ``data.args.size`` [h, w]."""
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise MissingDependency("Pillow", "images", f"reading images in {path}") from None
    if not path.is_dir():
        raise DataError(f"{path}: no such folder of class folders")
    classes = options.get("classes") or sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path}: no class folders inside")
    size = options.get("size")
    mode = "L" if options.get("grayscale", False) else "RGB"
    images: list[np.ndarray] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = path / str(name)
        if not folder.is_dir():
            raise DataError(f"{path}: no folder for class {name!r}")
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    converted = image.convert(mode)
                    if size is not None:
                        converted = converted.resize((int(size[1]), int(size[0])))
                    pixels = np.asarray(converted, np.float32) / 255.0
            except OSError as exc:
                raise DataError(f"{file}: not a readable image: {exc}") from None
            if images and pixels.shape != images[0].shape:
                raise DataError(
                    f"{file}: {pixels.shape} differs from the first image's {images[0].shape}; "
                    "set data.args.size to resize them all"
                )
            images.append(pixels)
            labels.append(index)
    if not images:
        raise DataError(f"{path}: no images in its class folders")
    return np.stack(images), np.asarray(labels, np.int64)


def read_arrays(path: Path, options: Mapping[str, Any]) -> Table:
    """``.npz`` or ``.safetensors`` holding arrays ``x`` and ``y`` (names set by data.args)."""
    x_name, y_name = str(options.get("x", "x")), str(options.get("y", "y"))
    if not path.is_file():
        raise DataError(f"{path}: no such array file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz file: {exc}") from None
    elif path.suffix == ".safetensors":
        from bastion.storage import load_checkpoint

        arrays, _ = load_checkpoint(path)
    else:
        raise DataError(f"{path}: array files are .npz or .safetensors")
    if x_name not in arrays or y_name not in arrays:
        raise DataError(f"{path}: needs arrays {x_name!r} and {y_name!r}; it has {sorted(arrays)}")
    x, y = np.asarray(arrays[x_name]), np.asarray(arrays[y_name])
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: {y_name!r} must be 1-D integer labels, one per row of {x_name!r}")
    return x, y.astype(np.int64)


def _split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, where: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not 0 < fraction < 1:
        raise DataError(f"{where}: valid_fraction must be between 0 and 1, got {fraction}")
    if len(y) < 2:
        raise DataError(f"{where}: {len(y)} examples; at least 2 are needed to train and validate")
    order = np.random.default_rng(seed).permutation(len(y))
    cut = max(1, min(len(y) - 1, round(len(y) * fraction)))
    valid, train = order[:cut], order[cut:]
    return x[train], y[train], x[valid], y[valid]


def _count_classes(*labels: np.ndarray) -> int:
    present = [int(y.max()) for y in labels if len(y)]
    return max(present) + 1 if present else 1
