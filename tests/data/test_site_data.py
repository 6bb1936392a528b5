"""A site's own files: tables, image folders and arrays read whole, mapped by site.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bastion.data.errors import DataError
from bastion.data.local import load_site_shard
from bastion.data.site import load_site_data, parse_data_options


def _csv(path: Path, rows: int, offset: float = 0.0) -> Path:
    lines = ["age,dose,outcome"]
    lines += [f"{offset + i},{i * 0.5},{i % 3}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_is_read_whole_and_split_by_the_site(tmp_path: Path) -> None:
    shard = load_site_shard("csv", _csv(tmp_path / "a.csv", 240), None, {"label": "outcome"})
    assert shard.train_count + shard.valid_count == 240  # every row, none dropped or shared
    assert shard.valid_count == 48 and shard.num_classes == 3
    assert shard.x_train.shape == (192, 2) and shard.x_train.dtype == np.float32
    rows = np.concatenate([shard.x_train[:, 0], shard.x_valid[:, 0]])
    assert sorted(rows.tolist()) == [float(i) for i in range(240)]


def test_a_separate_validation_file_is_used_as_given(tmp_path: Path) -> None:
    train, valid = _csv(tmp_path / "t.csv", 30), _csv(tmp_path / "v.csv", 7, offset=1000)
    shard = load_site_shard("csv", train, valid, {"label": "outcome", "num_classes": 4})
    assert (shard.train_count, shard.valid_count, shard.num_classes) == (30, 7, 4)
    assert shard.x_valid[:, 0].min() >= 1000


def test_feature_columns_can_be_chosen(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv", 10)
    shard = load_site_shard("csv", path, None, {"label": "outcome", "features": ["dose"]})
    assert shard.x_train.shape[1] == 1


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("age,outcome\n1,0\n", {}, "needs data.args.label"),
        ("age,outcome\n1,0\n2,1\n", {"label": "y"}, "no label column 'y'"),
        ("age,outcome\n1,0\n2\n", {"label": "outcome"}, "line 3: 1 fields"),
        ("age,outcome\nx,0\n2,1\n", {"label": "outcome"}, "line 2"),
        ("age,outcome\n1,0.5\n2,1\n", {"label": "outcome"}, "not an integer class"),
        ("age,outcome\n1,5\n2,1\n", {"label": "outcome", "num_classes": 2}, "labels must be 0..1"),
    ],
)
def test_bad_tables_are_named_with_their_line(
    tmp_path: Path, content: str, args: dict, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_site_shard("csv", path, None, args)


def test_arrays_from_npz_and_safetensors(tmp_path: Path) -> None:
    from bastion.storage import save_checkpoint

    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = (np.arange(20) % 2).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    save_checkpoint(tmp_path / "d.safetensors", {"x": x, "y": y})
    for name in ("d.npz", "d.safetensors"):
        shard = load_site_shard("arrays", tmp_path / name, None, {"valid_fraction": 0.25})
        assert shard.train_count == 15 and shard.valid_count == 5 and shard.num_classes == 2


def test_an_image_folder_has_one_folder_per_class(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((4, 5, 3), 40 * i, np.uint8)).save(
                tmp_path / label / f"{i}.png"
            )
    shard = load_site_shard("image_folder", tmp_path, None, {"valid_fraction": 0.5})
    assert shard.train_count + shard.valid_count == 6 and shard.num_classes == 2
    assert shard.x_train.shape[1:] == (4, 5, 3) and shard.x_train.max() <= 1.0


def test_parquet_tables(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.1, 0.2, 0.3, 0.4], "y": [0, 1, 0, 1]})
    pq.write_table(table, tmp_path / "t.parquet")
    shard = load_site_shard("parquet", tmp_path / "t.parquet", None, {"label": "y"})
    assert shard.train_count + shard.valid_count == 4 and shard.x_train.shape[1] == 2


def test_site_yaml_maps_dataset_names_to_local_files(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(
        "datasets:\n"
        "  patients:\n"
        "    path: data/patients.csv\n"
        "    valid: /srv/holdout.csv\n"
        "    args: {valid_fraction: 0.1}\n"
        "  scans: images/\n"
    )
    site = load_site_data(tmp_path / "site.yaml")
    patients = site.get("patients")
    assert patients is not None and patients.path == tmp_path / "data" / "patients.csv"
    assert patients.valid == Path("/srv/holdout.csv") and patients.args == {"valid_fraction": 0.1}
    assert site.get("scans") is not None and site.get("other") is None
    override = parse_data_options([f"patients={tmp_path}/b.csv"])
    assert site.merged(override).get("patients").path == tmp_path / "b.csv"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("datasets: [a]\n", "must map dataset names"),
        ("other: 1\n", "one key, 'datasets'"),
        ("datasets:\n  p: {valid: a.csv}\n", "give at least 'path'"),
        ("datasets:\n  p: {path: a.csv, label: y}\n", "unknown keys \\['label'\\]"),
        ("datasets:\n  p: {path: a.csv, args: {label: y}}\n", "a site may set only"),
    ],
)
def test_bad_site_configurations_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "site.yaml").write_text(content)
    with pytest.raises(DataError, match=message):
        load_site_data(tmp_path / "site.yaml")


def test_bad_data_options_are_refused() -> None:
    with pytest.raises(DataError, match="expected NAME=PATH"):
        parse_data_options(["patients"])
