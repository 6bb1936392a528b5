"""Spill files are kept for the next uploads, never shared by two at once, and closed
when the federation ends."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bastion.aggregator.spill_files import SpillFiles
from bastion.aggregator.streaming import StreamingIntake
from bastion.algorithms.fedavg import FedAvg
from bastion.errors import UpdateRejected
from bastion.framing import iter_frames
from bastion.tensors import spec_of

from .test_streaming import CHUNK, LIMIT, NO_BOUND, assert_same, model, update, whole_path


def test_a_returned_file_is_handed_to_the_next_upload() -> None:
    spills = SpillFiles(keep=2)
    first = spills.take()
    spills.give_back(first)
    assert spills.take() is first


def test_two_uploads_at_once_never_share_a_file() -> None:
    spills = SpillFiles(keep=2)
    assert spills.take() is not spills.take()


def test_no_more_than_keep_files_wait_and_the_rest_are_closed() -> None:
    spills = SpillFiles(keep=1)
    first, second = spills.take(), spills.take()
    spills.give_back(first)
    spills.give_back(second)
    assert spills.idle == 1
    assert second.closed and not first.closed


def test_closing_the_pool_closes_idle_files_and_any_returned_later() -> None:
    spills = SpillFiles(keep=2)
    idle, busy = spills.take(), spills.take()
    spills.give_back(idle)
    spills.close()
    assert idle.closed
    spills.give_back(busy)
    assert busy.closed and spills.idle == 0


def test_spill_files_are_unlinked() -> None:
    spills = SpillFiles()
    spill = spills.take()
    assert os.fstat(spill.fileno()).st_nlink == 0  # nothing on disk outlives the process


def test_an_upload_in_a_reused_file_takes_back_only_its_own_chunks() -> None:
    """The file still holds the last upload's bytes; a refused upload reads back what it
    wrote itself, nothing stale."""
    strategy = FedAvg("float64")
    streaming = StreamingIntake(strategy, spec_of(model()), NO_BOUND, concurrent_uploads=1)
    streaming.begin_round(model(), 1)
    first = streaming.receive("site-1", 3.0, iter_frames(update(1), CHUNK), LIMIT)
    assert streaming.commit(first)
    first.close()
    first.close()  # twice is harmless: the file is in the pool once
    poisoned = update(2)
    poisoned["b"][-1] = np.inf  # b's last chunk: w and the rest of b were folded first
    with pytest.raises(UpdateRejected, match="not finite|NaN or infinite"):
        streaming.receive("site-2", 4.0, iter_frames(poisoned, CHUNK), LIMIT)
    third = streaming.receive("site-3", 5.0, iter_frames(update(3), CHUNK), LIMIT)
    assert third.spill is first.spill
    assert streaming.commit(third)
    third.close()
    assert_same(
        strategy.finalize(),
        whole_path([(update(1), 3.0), (update(3), 5.0)], "float64"),
        "float64",
    )
    streaming.shut_down()
    assert first.spill.closed
