"""Median, trimmed mean and Krum keep a round's updates on disk, not in RAM."""

from __future__ import annotations

import errno
import gc
import stat
import tracemalloc

import numpy as np
import pytest

from bastion.algorithms.errors import AggregationError
from bastion.algorithms.krum import Krum, KrumArgs
from bastion.algorithms.median import Median, MedianArgs
from bastion.algorithms.spill import SpillFile, row_layout, spill_dtype_for
from bastion.algorithms.trimmed_mean import TrimmedMean, TrimmedMeanArgs
from bastion.errors import UpdateRejected

MIB = 2**20


def spilling_strategies(spill_dir):
    return [
        Median(MedianArgs(spill_dir=spill_dir)),
        TrimmedMean(TrimmedMeanArgs(spill_dir=spill_dir, beta=0.2)),
        Krum(KrumArgs(spill_dir=spill_dir, f=1, m=2)),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["median", "trimmed_mean", "krum"])
def test_updates_are_memory_mapped_files_removed_by_close(tmp_path, index):
    strategy = spilling_strategies(str(tmp_path))[index]
    model = {"w": np.zeros((4, 3), np.float32), "steps": np.array(0, np.int64)}
    strategy.begin_round(model, 1)
    for i in range(5):
        strategy.accumulate(
            f"site-{i}", {"w": np.full((4, 3), i, np.float32), "steps": np.array(i)}, 1.0
        )
    path = strategy.spill_path
    assert path is not None and path.parent.parent == tmp_path
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # updates are private
    assert path.stat().st_size == 5 * 13 * 8  # float64 rows: the int64 tensor needs them
    assert strategy.accepted == 5

    result = strategy.finalize()
    assert not path.exists()  # the round's file goes as soon as the round is aggregated
    assert result["steps"].dtype == np.int64 and result["w"].dtype == np.float32

    strategy.begin_round(result, 2)
    second = strategy.spill_path
    assert second is not None and second.exists() and second != path
    strategy.close()
    assert not second.exists() and list(tmp_path.iterdir()) == []


def test_rows_are_read_back_through_memmap(tmp_path):
    model = {"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float16)}
    layout = row_layout(model)
    spill = SpillFile(tmp_path / "round.bin", layout, spill_dtype_for(model))
    spill.append({"a": np.arange(3, dtype=np.float32), "b": np.ones((2, 2), np.float16)})
    spill.append({"a": -np.arange(3, dtype=np.float32), "b": np.zeros((2, 2), np.float16)})
    rows = spill.rows()
    assert isinstance(rows, np.memmap) and rows.dtype == np.float32 and rows.shape == (2, 7)
    assert rows[1].tolist() == [0, -1, -2, 0, 0, 0, 0]
    with pytest.raises(UpdateRejected, match="shape"):
        spill.append({"a": np.zeros(4, np.float32), "b": np.zeros((2, 2), np.float16)})
    assert spill.count == 2
    spill.close()
    assert not (tmp_path / "round.bin").exists()


def test_a_full_disk_leaves_only_whole_rows(tmp_path, monkeypatch):
    model = {"a": np.zeros(4), "b": np.zeros(4)}
    spill = SpillFile(tmp_path / "round.bin", row_layout(model), np.dtype(np.float64))
    spill.append({"a": np.ones(4), "b": np.ones(4)})
    real_write = spill._write_all
    calls = []

    def write_then_fail(data):
        calls.append(len(data))
        if len(calls) == 2:  # the first tensor reached the disk, the second did not
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(data)

    monkeypatch.setattr(spill, "_write_all", write_then_fail)
    with pytest.raises(AggregationError, match="No space left.*aggregation.args.spill_dir"):
        spill.append({"a": np.full(4, 2.0), "b": np.full(4, 2.0)})
    assert spill.count == 1 and (tmp_path / "round.bin").stat().st_size == 8 * 8
    monkeypatch.setattr(spill, "_write_all", real_write)
    spill.append({"a": np.full(4, 3.0), "b": np.full(4, 3.0)})
    assert spill.rows()[:, 0].tolist() == [1.0, 3.0]
    spill.close()


def test_spill_dtype_follows_the_model():
    assert spill_dtype_for({"w": np.zeros(1, np.float32), "m": np.zeros(1, np.bool_)}) == np.float32
    assert spill_dtype_for({"w": np.zeros(1, np.float16), "i": np.zeros(1, np.int16)}) == np.float32
    assert spill_dtype_for({"w": np.zeros(1, np.float32), "n": np.zeros(1, np.int64)}) == np.float64


def test_forgotten_strategy_still_removes_its_directory(tmp_path):
    strategy = Median(MedianArgs(spill_dir=str(tmp_path)))
    strategy.begin_round({"w": np.zeros(2)}, 1)
    strategy.accumulate("site", {"w": np.ones(2)}, 1.0)
    assert len(list(tmp_path.iterdir())) == 1
    del strategy
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_missing_spill_dir_is_a_clear_error(tmp_path):
    strategy = Median(MedianArgs(spill_dir=str(tmp_path / "nope")))
    with pytest.raises(AggregationError, match="aggregation.args.spill_dir"):
        strategy.begin_round({"w": np.zeros(2)}, 1)


def test_median_of_20_updates_of_a_1m_float_model_does_not_hold_them_in_ram(tmp_path):
    model = {"encoder": np.zeros(600_000, np.float32), "decoder": np.zeros((400, 1000), np.float32)}
    update_bytes = 1_000_000 * 4
    strategy = Median(MedianArgs(spill_dir=str(tmp_path), block_mib=1))
    strategy.begin_round(model, 1)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        for i in range(20):
            update = {n: rng.standard_normal(a.shape, dtype=np.float32) for n, a in model.items()}
            strategy.accumulate(f"site-{i}", update, 1.0)
            del update
        _, accumulate_peak = tracemalloc.get_traced_memory()
        assert strategy.spill_path is not None
        assert strategy.spill_path.stat().st_size == 20 * update_bytes
        tracemalloc.reset_peak()
        result = strategy.finalize()
        _, finalize_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        strategy.close()
    # All 20 updates would be 80 MB; one update plus the float64 result and a block is ~16 MB.
    assert accumulate_peak < 3 * update_bytes
    assert finalize_peak < 6 * update_bytes
    assert result["decoder"].shape == (400, 1000) and abs(float(result["encoder"].mean())) < 0.01
