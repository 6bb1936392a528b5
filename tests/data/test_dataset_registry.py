"""load_dataset: registered names, users' own loaders, and checks on what they return."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from bastion.data import DataError, Dataset, check_dataset, load_dataset, registered_datasets


def write_module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "workspace"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


LOADER = """
    import numpy as np
    from bastion.data import Dataset

    def load(n=8, classes=3):
        x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        y = np.arange(n, dtype=np.int64) % classes
        return Dataset("mine", x, y, x[:4], y[:4], num_classes=classes)
"""


def test_registered_names() -> None:
    assert registered_datasets() == ["descriptions", "digits", "mnist"]


def test_registered_dataset_with_arguments() -> None:
    dataset = load_dataset("digits", flatten=False, seed=3)
    assert dataset.name == "digits" and dataset.x_train.shape[1:] == (1, 8, 8)


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(
        DataError, match="unknown dataset 'cifar': use one of descriptions, digits, mnist"
    ):
        load_dataset("cifar")


def test_unexpected_argument_lists_the_accepted_ones() -> None:
    with pytest.raises(
        DataError, match="does not accept.*it accepts: flatten, test_fraction, seed"
    ):
        load_dataset("digits", flaten=True)


def test_user_loader_by_import_path(user_modules: Path) -> None:
    write_module(user_modules, "bastion_test_loader", LOADER)
    dataset = load_dataset("bastion_test_loader:load", n=10)
    assert dataset.name == "mine" and len(dataset.y_train) == 10


def test_user_loader_module_not_found(user_modules: Path) -> None:
    with pytest.raises(DataError, match="module 'bastion_test_absent' not found"):
        load_dataset("bastion_test_absent:load")


def test_user_loader_function_not_found(user_modules: Path) -> None:
    write_module(user_modules, "bastion_test_nofunc", LOADER)
    with pytest.raises(DataError, match="'bastion_test_nofunc' has no 'fetch'"):
        load_dataset("bastion_test_nofunc:fetch")


def test_missing_dependency_of_a_user_module_is_not_disguised(user_modules: Path) -> None:
    write_module(user_modules, "bastion_test_needs", "import bastion_test_missing_dep\n")
    with pytest.raises(ModuleNotFoundError, match="bastion_test_missing_dep"):
        load_dataset("bastion_test_needs:load")


def test_user_loader_must_return_a_dataset(user_modules: Path) -> None:
    write_module(user_modules, "bastion_test_wrongtype", "def load():\n    return [1, 2]\n")
    with pytest.raises(DataError, match="returned list, not a bastion.data.Dataset"):
        load_dataset("bastion_test_wrongtype:load")


def make(**changes: object) -> Dataset:
    x = np.zeros((6, 2), np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    fields: dict[str, object] = dict(
        name="t", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3], num_classes=3
    )
    fields.update(changes)
    return Dataset(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_train": np.array([0, 1, 2])}, "x_train has 6 examples but y_train 3"),
        ({"y_test": np.array([0.0, 1.0, 2.0])}, "y_test must be a 1-D integer array"),
        ({"y_train": np.array([0, 1, 2, 0, 1, 3])}, "labels outside 0..2"),
        ({"y_train": np.array([0, 1, 2, 0, 1, -1])}, "labels outside 0..2"),
        ({"x_test": np.zeros((3, 5), np.float32)}, r"shape \(2,\) but x_test's \(5,\)"),
        ({"x_test": np.zeros((0, 2)), "y_test": np.zeros(0, int)}, "the test split is empty"),
        ({"num_classes": 0}, "num_classes must be at least 1"),
        ({"x_train": [[0.0, 0.0]] * 6}, "must be numpy arrays"),
    ],
)
def test_inconsistent_datasets_are_explained(changes: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_dataset(make(**changes), "t")


def test_consistent_dataset_passes_unchanged() -> None:
    dataset = make()
    assert check_dataset(dataset, "t") is dataset
