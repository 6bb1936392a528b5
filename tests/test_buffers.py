"""Model-sized buffers (a strategy's accumulators, a site's received model) are reused
across rounds only once nothing else holds them: a model the engine, a runner or anyone
still holds is never overwritten."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from bastion.algorithms.fedavg import FedAvg
from bastion.buffers import RetiredBuffers, unshared
from bastion.errors import ProtocolError
from bastion.framing import assemble_frames, iter_frames
from bastion.tensors import Weights

SHAPE = (64, 32)


def model(value: float) -> Weights:
    return {"w": np.full(SHAPE, value, np.float32), "b": np.full((32,), value, np.float32)}


def run_round(strategy: FedAvg, global_model: Weights, number: int) -> Weights:
    strategy.begin_round(global_model, number)
    strategy.accumulate("site-1", {n: a + 1 for n, a in global_model.items()}, 1.0)
    strategy.accumulate("site-2", {n: a + 3 for n, a in global_model.items()}, 1.0)
    return strategy.finalize()


def test_a_retired_buffer_nothing_holds_is_zeroed_and_reused() -> None:
    buffers = RetiredBuffers()
    array = np.ones(SHAPE, np.float64)
    ref = weakref.ref(array)
    buffers.hold([array])
    del array
    again = buffers.zeros(SHAPE, np.dtype(np.float64))
    assert again is ref() and not again.any()


@pytest.mark.parametrize(
    "holder",
    [
        lambda a: a,  # another reference
        lambda a: a.reshape(-1),  # a view
        lambda a: memoryview(a),  # an exported buffer (a chunk being sent)
    ],
    ids=["reference", "view", "memoryview"],
)
def test_a_buffer_someone_still_holds_is_never_reused(holder) -> None:  # type: ignore[no-untyped-def]
    buffers = RetiredBuffers()
    array = np.ones(SHAPE, np.float64)
    buffers.hold([array])
    held = holder(array)
    del array
    fresh = buffers.zeros(SHAPE, np.dtype(np.float64))
    assert not np.shares_memory(fresh, np.asarray(held))
    assert np.asarray(held).all()  # untouched
    assert len(buffers) == 1


def test_only_matching_shape_and_dtype_is_reused_and_hold_replaces_what_was_held() -> None:
    buffers = RetiredBuffers()
    buffers.hold([np.ones(SHAPE, np.float32), np.ones((3,), np.float64)])
    assert buffers.zeros(SHAPE, np.dtype(np.float64)).dtype == np.float64
    assert len(buffers) == 2  # nothing matched: a new array, the held ones stay
    buffers.hold([np.ones((4,))])
    assert len(buffers) == 1
    buffers.clear()
    assert len(buffers) == 0


def test_unshared_reads_views_of_a_view_as_shared() -> None:
    array = np.ones(8)
    assert unshared(array, holders=1)
    view = array[2:]
    assert not unshared(array, holders=1)
    assert not unshared(view, holders=1)  # a view never owns its memory


@pytest.mark.parametrize("accumulator", ["float64", "float32-delta"])
def test_models_that_are_still_held_keep_their_values_over_many_rounds(accumulator: str) -> None:
    strategy = FedAvg(accumulator)  # type: ignore[arg-type]
    models = [model(0.0)]
    for number in range(1, 6):
        models.append(run_round(strategy, models[-1], number))
    for number, weights in enumerate(models):
        np.testing.assert_array_equal(weights["w"], np.full(SHAPE, 2.0 * number, np.float32))


def test_a_float32_delta_accumulator_is_reused_two_rounds_on_once_let_go() -> None:
    strategy = FedAvg("float32-delta")
    first = run_round(strategy, model(0.0), 1)
    first_w = weakref.ref(first["w"])
    second = run_round(strategy, first, 2)
    del first  # the strategy still holds round 1's model as round 2's: not yet free
    gc.collect()
    assert first_w() is not None
    third = run_round(strategy, second, 3)
    assert third["w"] is first_w()  # round 1's model buffer holds round 3's model
    np.testing.assert_array_equal(third["w"], np.full(SHAPE, 6.0, np.float32))


def test_a_strategy_holds_no_buffer_longer_than_its_round_needs_it() -> None:
    strategy = FedAvg("float32-delta")
    first = run_round(strategy, model(0.0), 1)
    second = run_round(strategy, first, 2)
    first_w = weakref.ref(first["w"])
    strategy.begin_round(second, 3)  # round 1's model, held elsewhere: not taken
    assert first_w() is not None
    np.testing.assert_array_equal(first["w"], np.full(SHAPE, 2.0, np.float32))
    del first
    gc.collect()
    assert first_w() is None  # and not kept either: freed with its last outside reference


def _assembled(weights: Weights, buffers: RetiredBuffers) -> Weights:
    return assemble_frames(iter_frames(weights, 1000), 1 << 20, buffers=buffers)


def test_a_site_receives_the_next_model_into_the_last_one_once_it_is_let_go() -> None:
    buffers = RetiredBuffers()
    first = _assembled(model(1.0), buffers)
    first_buffer = weakref.ref(first["w"].base)  # type: ignore[arg-type]
    del first
    second = _assembled(model(2.0), buffers)
    assert second["w"].base is first_buffer()
    np.testing.assert_array_equal(second["w"], model(2.0)["w"])
    np.testing.assert_array_equal(second["b"], model(2.0)["b"])


def test_a_model_still_held_is_not_received_into() -> None:
    buffers = RetiredBuffers()
    first = _assembled(model(1.0), buffers)
    second = _assembled(model(2.0), buffers)
    assert not np.shares_memory(first["w"], second["w"])
    np.testing.assert_array_equal(first["w"], model(1.0)["w"])


def test_a_cut_stream_into_reused_buffers_is_refused_not_half_old() -> None:
    buffers = RetiredBuffers()
    _assembled(model(1.0), buffers)
    frames = list(iter_frames(model(2.0), 1000))
    with pytest.raises(ProtocolError, match="stream ended inside tensor"):
        assemble_frames(frames[:2], 1 << 20, buffers=buffers)
