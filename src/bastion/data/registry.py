"""Dataset lookup by name (``descriptions``, ``digits``, ``mnist``) or by a user's ``package.module:function``."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from bastion.data.errors import DataError
from bastion.data.types import Dataset

# Import paths, not functions, so that listing datasets imports none of them.
REGISTERED: dict[str, str] = {
    "descriptions": "bastion.data.descriptions:load_descriptions",
    "digits": "bastion.data.digits:load_digits",
    "mnist": "bastion.data.mnist:load_mnist",
}

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def registered_datasets() -> list[str]:
    """The names ``load_dataset`` accepts besides import paths."""
    return sorted(REGISTERED)


def load_dataset(name_or_path: str, **args: Any) -> Dataset:
    """Load a registered dataset, or call a user's loader ``package.module:function``.

    ``args`` go to the loader (e.g. ``flatten=True``); the result is checked to be a
    consistent ``Dataset`` before it is returned.
    """
    loader = resolve_loader(name_or_path)
    try:
        inspect.signature(loader).bind(**args)
    except TypeError as exc:
        accepted = ", ".join(inspect.signature(loader).parameters) or "no arguments"
        raise DataError(
            f"dataset '{name_or_path}' does not accept {sorted(args)} ({exc}); "
            f"it accepts: {accepted}"
        ) from exc
    return check_dataset(loader(**args), name_or_path)


def resolve_loader(name_or_path: str) -> Callable[..., Dataset]:
    """The loader function behind a registered name or an import path."""
    path = REGISTERED.get(name_or_path, name_or_path)
    if not _IMPORT_PATH.match(path):
        raise DataError(
            f"unknown dataset '{name_or_path}': use one of {', '.join(registered_datasets())}, "
            "or the import path of your own loader as 'package.module:function'"
        )
    module_name, function_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # The module exists but one of its own imports is missing.
        raise DataError(
            f"dataset loader '{path}': module '{module_name}' not found; check the name and "
            "that its folder is on PYTHONPATH (the workspace root is)"
        ) from exc
    loader = getattr(module, function_name, None)
    if not callable(loader):
        raise DataError(f"dataset loader '{path}': '{module_name}' has no '{function_name}'")
    return loader


def check_dataset(dataset: object, source: str) -> Dataset:
    """``dataset`` if it is a consistent ``Dataset``, else an error saying what is wrong."""
    if not isinstance(dataset, Dataset):
        raise DataError(
            f"dataset loader '{source}' returned {type(dataset).__name__}, not a "
            "bastion.data.Dataset"
        )
    problems: list[str] = []
    if isinstance(dataset.num_classes, bool) or not isinstance(dataset.num_classes, int):
        problems.append(f"num_classes must be an int, got {dataset.num_classes!r}")
    elif dataset.num_classes < 1:
        problems.append(f"num_classes must be at least 1, got {dataset.num_classes}")
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        problems.extend(_split_problems(split, x, y, dataset.num_classes))
    x_train, x_test = dataset.x_train, dataset.x_test
    if not problems and x_train.shape[1:] != x_test.shape[1:]:
        problems.append(
            f"x_train examples have shape {x_train.shape[1:]} but x_test's {x_test.shape[1:]}"
        )
    if problems:
        raise DataError(f"dataset '{source}' is inconsistent: " + "; ".join(problems))
    return dataset


def _split_problems(split: str, x: object, y: object, num_classes: object) -> list[str]:
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        return [f"x_{split} and y_{split} must be numpy arrays"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        return [f"y_{split} must be a 1-D integer array, got {y.dtype} {y.shape}"]
    if x.ndim < 1 or len(x) != len(y):
        return [f"x_{split} has {len(x) if x.ndim else 0} examples but y_{split} {len(y)}"]
    if len(y) == 0:
        return [f"the {split} split is empty"]
    if isinstance(num_classes, int) and (y.min() < 0 or y.max() >= num_classes):
        return [f"y_{split} holds labels outside 0..{num_classes - 1}"]
    return []
