"""HeapTrim returns glibc's free pages after accepted results (at most once a second) and
every checkpoint;
ResidentMemory puts what the aggregator holds after each round into the round's record."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bastion.aggregator.events import Checkpointed, ResultAccepted, RoundStarted
from bastion.aggregator.memory import HeapTrim, ResidentMemory


class _Libc:
    def __init__(self) -> None:
        self.trims = 0

    def malloc_trim(self, pad: int) -> int:
        self.trims += 1
        return 1


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_after_results_at_most_once_an_interval_and_at_every_checkpoint() -> None:
    # Once a round let the buffers freed by a round's downloads and uploads pile up in the
    # arenas: the soak's RSS crept by 0.4 MiB a round. A trim per result of a fast round
    # gave back pages the next result faulted in again.
    clock = _Clock()
    trim = HeapTrim(min_interval=1.0, clock=clock)
    libc = _Libc()
    trim._libc = libc
    trim.notify(RoundStarted(1, False, ("a", "b")))
    assert libc.trims == 0
    for site in ("a", "b", "c"):
        trim.notify(ResultAccepted(1, site, "train", "train", 10, {}))
        clock.now += 0.4
    assert libc.trims == 1  # a at 100.0; b (100.4) and c (100.8) within the second
    trim.notify(ResultAccepted(1, "d", "train", "train", 10, {}))
    assert libc.trims == 2  # 101.2: a second after a
    trim.notify(Checkpointed(1, False, sha256=""))
    assert libc.trims == 3  # a checkpoint always trims
    clock.now += 2.0
    trim.notify(ResultAccepted(2, "a", "train", "train", 10, {}))
    assert libc.trims == 4  # results of slow rounds still trim one by one


def test_does_nothing_without_glibc() -> None:
    trim = HeapTrim()
    trim._libc = None
    trim.notify(Checkpointed(1, False, sha256=""))  # no error where malloc_trim does not exist


def _closed() -> Any:
    return object()  # ResidentMemory reads nothing of the closed round


def test_resident_memory_reads_rss_and_fds_of_a_proc_folder(tmp_path: Path) -> None:
    (tmp_path / "fd").mkdir()
    for fd in ("0", "1", "2", "7"):
        (tmp_path / "fd" / fd).touch()
    (tmp_path / "status").write_text("Name:\tpython\nVmPeak:\t 999 kB\nVmRSS:\t  123456 kB\n")
    memory = ResidentMemory(tmp_path)
    memory._libc = libc = _Libc()
    fields = memory.round_fields(_closed())
    assert fields == {"resident_memory": {"rss_bytes": 123456 * 1024, "open_fds": 4}}
    assert libc.trims == 1  # free pages are given back before the figure is read


def test_resident_memory_adds_nothing_without_proc(tmp_path: Path) -> None:
    assert ResidentMemory(tmp_path / "missing").round_fields(_closed()) == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_resident_memory_of_this_process() -> None:
    figures = ResidentMemory().round_fields(_closed())["resident_memory"]
    assert 10 * 2**20 < figures["rss_bytes"] < 64 * 2**30 and figures["open_fds"] >= 3
