"""Each upload's copy is kept for the next uploads, never shared by two at once, held in
memory for small models and in unlinked files for larger ones, and closed when the
federation ends."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bastion.aggregator.streaming import StreamingIntake
from bastion.aggregator.upload_copies import FileStore, MemoryStore, UploadCopies, UploadCopy
from bastion.algorithms.fedavg import FedAvg
from bastion.errors import ProtocolError, UpdateRejected
from bastion.framing import iter_frames
from bastion.tensors import spec_of

from .test_streaming import CHUNK, LIMIT, NO_BOUND, assert_same, model, update, whole_path

SMALL, LARGE = 1024, 1 << 20
IN_MEMORY_UP_TO = 64 * 1024
VALUES = np.arange(8, dtype=np.float32)


def pool(keep: int = 2) -> UploadCopies:
    return UploadCopies(keep=keep, in_memory_up_to=IN_MEMORY_UP_TO)


def written(copies: UploadCopies, nbytes: int) -> UploadCopy:
    """A copy that has borrowed its store: something was written to it."""
    copy = copies.take(nbytes)
    copy.write_at(0, VALUES.data)
    return copy


def test_small_uploads_are_copied_in_memory_and_large_ones_to_disk() -> None:
    copies = pool()
    assert isinstance(written(copies, SMALL).store, MemoryStore)
    assert isinstance(written(copies, LARGE).store, FileStore)


@pytest.mark.parametrize("nbytes", [SMALL, LARGE])
def test_a_copy_reads_back_what_it_wrote(nbytes: int) -> None:
    copy = pool().take(nbytes)
    copy.write_at(16, VALUES.data)
    np.testing.assert_array_equal(np.frombuffer(copy.read_at(16, 32), np.float32), VALUES)


def test_a_copy_holds_nothing_until_its_first_write() -> None:
    """An upload waiting for its slot has taken its copy already; it must not hold a
    buffer or a file, or every waiting upload would cost one."""
    copies = pool()
    waiting = [copies.take(SMALL) for _ in range(10)]
    assert all(copy.store is None for copy in waiting)
    for copy in waiting:
        copy.close()
    assert copies.idle == 0


@pytest.mark.parametrize("nbytes", [SMALL, LARGE])
def test_a_returned_store_is_lent_to_the_next_upload(nbytes: int) -> None:
    copies = pool()
    first = written(copies, nbytes)
    store = first.store
    first.close()
    first.close()  # twice is harmless: the store is in the pool once
    assert copies.idle == 1
    assert written(copies, nbytes).store is store


def test_a_kept_buffer_too_small_for_the_next_upload_is_not_lent() -> None:
    copies = pool()
    small = written(copies, SMALL)
    store = small.store
    small.close()
    assert written(copies, 2 * SMALL).store is not store
    assert copies.idle == 1


@pytest.mark.parametrize("nbytes", [SMALL, LARGE])
def test_two_uploads_at_once_never_share_a_store(nbytes: int) -> None:
    copies = pool()
    assert written(copies, nbytes).store is not written(copies, nbytes).store


@pytest.mark.parametrize("nbytes", [SMALL, LARGE])
def test_no_more_than_keep_stores_wait_and_the_rest_are_closed(nbytes: int) -> None:
    copies = pool(keep=1)
    first, second = written(copies, nbytes), written(copies, nbytes)
    kept, closed = first.store, second.store
    assert kept is not None and closed is not None
    first.close()
    second.close()
    assert copies.idle == 1
    assert closed.closed and not kept.closed


@pytest.mark.parametrize("nbytes", [SMALL, LARGE])
def test_closing_the_pool_closes_idle_stores_and_any_returned_later(nbytes: int) -> None:
    copies = pool()
    idle, busy = written(copies, nbytes), written(copies, nbytes)
    idle_store, busy_store = idle.store, busy.store
    assert idle_store is not None and busy_store is not None
    idle.close()
    copies.close()
    assert idle_store.closed
    busy.close()
    assert busy_store.closed and copies.idle == 0


def test_spill_files_are_unlinked() -> None:
    spill = written(pool(), LARGE).store
    assert isinstance(spill, FileStore)
    assert os.fstat(spill.fileno()).st_nlink == 0  # nothing on disk outlives the process


def test_a_memory_copy_refuses_values_past_its_capacity() -> None:
    copy = pool().take(32)
    with pytest.raises(ProtocolError, match="run past the model's 32 bytes"):
        copy.write_at(16, VALUES.data)


@pytest.mark.parametrize("in_memory_up_to", [1 << 20, 0], ids=["memory", "disk"])
def test_an_upload_in_a_reused_copy_takes_back_only_its_own_chunks(in_memory_up_to: int) -> None:
    """The copy still holds the last upload's bytes; a refused upload reads back what it
    wrote itself, nothing stale."""
    strategy = FedAvg("float64")
    streaming = StreamingIntake(
        strategy, spec_of(model()), NO_BOUND, concurrent_uploads=1, in_memory_up_to=in_memory_up_to
    )
    streaming.begin_round(model(), 1)
    first = streaming.receive("site-1", 3.0, iter_frames(update(1), CHUNK), LIMIT)
    assert streaming.commit(first)
    first_store = first.copy.store
    first.close()
    first.close()  # twice is harmless: the store is in the pool once
    poisoned = update(2)
    poisoned["b"][-1] = np.inf  # b's last chunk: w and the rest of b were folded first
    with pytest.raises(UpdateRejected, match="not finite|NaN or infinite"):
        streaming.receive("site-2", 4.0, iter_frames(poisoned, CHUNK), LIMIT)
    third = streaming.receive("site-3", 5.0, iter_frames(update(3), CHUNK), LIMIT)
    assert third.copy.store is first_store
    assert streaming.commit(third)
    third.close()
    assert_same(
        strategy.finalize(),
        whole_path([(update(1), 3.0), (update(3), 5.0)], "float64"),
        "float64",
    )
    streaming.shut_down()
    assert first_store is not None and first_store.closed
