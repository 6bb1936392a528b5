"""The streaming intake folds a result chunk by chunk with the whole-update path's checks,
and takes back what a refused one folded."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from bastion.aggregator.influence import InfluenceBounds
from bastion.aggregator.streaming import StreamingIntake
from bastion.algorithms.fedavg import FedAvg
from bastion.errors import ProtocolError, UpdateRejected
from bastion.framing import Frame, iter_frames
from bastion.tensors import Weights, spec_of, weights_digest

ACCUMULATORS = ["float64", "float32-delta"]
CHUNK = 256  # bytes: every float tensor below spans several chunks
LIMIT = 1 << 20
NO_BOUND = InfluenceBounds(max_update_norm_ratio=None)
#: Where ``intake`` keeps each upload's copy: every test runs with both.
COPIES_IN = {"memory": 1 << 20, "disk": 0}
_in_memory_up_to = COPIES_IN["memory"]


@pytest.fixture(params=list(COPIES_IN), autouse=True)
def copies_in(request: pytest.FixtureRequest) -> Iterator[str]:
    """Take-backs and deferred folds read the copies, so each test runs with both kinds."""
    global _in_memory_up_to
    _in_memory_up_to = COPIES_IN[request.param]
    yield request.param
    _in_memory_up_to = COPIES_IN["memory"]


def model() -> Weights:
    rng = np.random.default_rng(0)
    return {
        "w": rng.normal(size=(40, 30)).astype(np.float32),
        "b": rng.normal(size=(30,)).astype(np.float32),
        "steps": np.array([3, 4], dtype=np.int64),
    }


def update(seed: int, scale: float = 0.1) -> Weights:
    rng = np.random.default_rng(seed)
    return {
        n: (a + scale * rng.normal(size=a.shape)).astype(a.dtype) if a.dtype.kind == "f" else a + 1
        for n, a in model().items()
    }


def intake(accumulator: str, bounds: InfluenceBounds = NO_BOUND) -> tuple[StreamingIntake, FedAvg]:
    strategy = FedAvg(accumulator)  # type: ignore[arg-type]
    streaming = StreamingIntake(
        strategy, spec_of(model()), bounds, in_memory_up_to=_in_memory_up_to
    )
    streaming.begin_round(model(), 1)
    return streaming, strategy


def whole_path(updates: list[tuple[Weights, float]], accumulator: str) -> Weights:
    strategy = FedAvg(accumulator)  # type: ignore[arg-type]
    strategy.begin_round(model(), 1)
    for weights, weight in updates:
        strategy.accumulate("x", weights, weight)
    return strategy.finalize()


def fold(streaming: StreamingIntake, weights: Weights, weight: float, chunk: int = CHUNK) -> str:
    upload = streaming.receive("site", weight, iter_frames(weights, chunk), LIMIT)
    assert streaming.commit(upload)
    upload.close()
    return upload.digest


def assert_same(a: Weights, b: Weights, accumulator: str) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype
        if accumulator == "float64":
            np.testing.assert_array_equal(a[name], b[name])
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_folding_chunks_equals_accumulating_whole_updates(accumulator: str) -> None:
    streaming, strategy = intake(accumulator)
    digests = [fold(streaming, update(1), 3.0), fold(streaming, update(2), 5.0)]
    assert digests == [weights_digest(update(1)), weights_digest(update(2))]
    assert_same(
        strategy.finalize(),
        whole_path([(update(1), 3.0), (update(2), 5.0)], accumulator),
        accumulator,
    )


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_chunks_that_split_an_element_fold_the_same(accumulator: str) -> None:
    streaming, strategy = intake(accumulator)
    fold(streaming, update(1), 2.0, chunk=7)  # 7 bytes: most float32 elements are split
    assert_same(strategy.finalize(), whole_path([(update(1), 2.0)], accumulator), accumulator)


def _then(frames: Iterator[Frame], bad: Frame) -> Iterator[Frame]:
    """All frames of ``frames`` but the last, then ``bad``."""
    items = list(frames)
    yield from items[:-1]
    yield bad


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_a_chunk_that_is_not_finite_takes_back_what_was_folded(accumulator: str) -> None:
    streaming, strategy = intake(accumulator)
    fold(streaming, update(1), 3.0)
    poisoned = update(2)
    poisoned["w"][-1, -1] = np.nan  # the last chunk of the first tensor
    with pytest.raises(UpdateRejected, match="'w' contains NaN or infinite values"):
        streaming.receive("bad", 4.0, iter_frames(poisoned, CHUNK), LIMIT)
    assert strategy.accepted == 1
    assert_same(strategy.finalize(), whole_path([(update(1), 3.0)], accumulator), accumulator)


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_a_broken_stream_is_taken_back(accumulator: str) -> None:
    streaming, strategy = intake(accumulator)
    fold(streaming, update(1), 3.0)
    frames = iter_frames(update(2), CHUNK)
    wrong = Frame("steps", "int64", (2,), 8, b"\0" * 8)  # skips the first element
    with pytest.raises(ProtocolError, match="chunk at offset 8, expected 0"):
        streaming.receive("bad", 4.0, _then(frames, wrong), LIMIT)
    assert_same(strategy.finalize(), whole_path([(update(1), 3.0)], accumulator), accumulator)


def test_missing_tensors_are_refused_with_the_whole_update_message() -> None:
    streaming, strategy = intake("float64")
    partial = {k: v for k, v in update(1).items() if k != "b"}
    with pytest.raises(UpdateRejected, match=r"missing tensors \['b'\]"):
        streaming.receive("bad", 1.0, iter_frames(partial, CHUNK), LIMIT)
    assert strategy.accepted == 0


def test_a_header_refusal_reads_the_frames_and_folds_nothing() -> None:
    streaming, strategy = intake("float64")
    with pytest.raises(UpdateRejected, match="example count"):
        streaming.receive("bad", 1.0, iter_frames(update(1), CHUNK), LIMIT, "example count 9")
    with pytest.raises(ProtocolError):  # a malformed stream is still told first
        streaming.receive("bad", 1.0, iter_frames(update(1), CHUNK), 16, "example count 9")
    fold(streaming, update(2), 1.0)
    assert_same(strategy.finalize(), whole_path([(update(2), 1.0)], "float64"), "float64")


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_huge_values_never_enter_the_sum_before_they_are_judged(accumulator: str) -> None:
    """Past the norm bound an upload only spills, so taking it back loses no precision."""
    streaming, strategy = intake(accumulator, InfluenceBounds(max_update_norm=10.0))
    fold(streaming, update(1), 3.0)
    hostile = {n: np.full_like(a, 1e30) if a.dtype.kind == "f" else a for n, a in model().items()}
    with pytest.raises(UpdateRejected, match="from the global model; the bound is 10"):
        streaming.receive("bad", 4.0, iter_frames(hostile, CHUNK), LIMIT)
    assert_same(strategy.finalize(), whole_path([(update(1), 3.0)], accumulator), accumulator)


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_a_clipped_update_folds_and_hashes_as_on_the_whole_update_path(accumulator: str) -> None:
    bounds = InfluenceBounds(max_update_norm=1.0, norm_bound="clip")
    streaming, strategy = intake(accumulator, bounds)
    far = update(3, scale=5.0)
    digest = fold(streaming, far, 2.0)
    expected = bounds.bound_update("site", far, model())
    assert digest == weights_digest(expected)
    assert_same(strategy.finalize(), whole_path([(expected, 2.0)], accumulator), accumulator)


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_an_upload_cut_by_the_round_closing_is_not_counted(accumulator: str) -> None:
    streaming, strategy = intake(accumulator)
    fold(streaming, update(1), 3.0)

    def closing_midway() -> Iterator[Frame]:
        for i, frame in enumerate(iter_frames(update(2), CHUNK)):
            if i == 3:
                streaming.close()  # the engine closes the round (a timeout)
            yield frame

    late = streaming.receive("late", 4.0, closing_midway(), LIMIT)
    assert not streaming.commit(late)
    late.close()
    assert_same(strategy.finalize(), whole_path([(update(1), 3.0)], accumulator), accumulator)


def test_an_upload_of_a_restarted_round_never_folds_into_the_next() -> None:
    streaming, strategy = intake("float32-delta")
    frames = iter_frames(update(2), CHUNK)
    early = [next(frames) for _ in range(3)]

    def restarted() -> Iterator[Frame]:
        yield from early
        streaming.close()
        streaming.begin_round(model(), 1)  # the same round number, opened afresh
        yield from frames

    stale = streaming.receive("stale", 4.0, restarted(), LIMIT)
    assert not streaming.commit(stale)
    stale.close()
    fold(streaming, update(1), 3.0)
    assert_same(
        strategy.finalize(), whole_path([(update(1), 3.0)], "float32-delta"), "float32-delta"
    )


def test_float32_delta_finalizes_in_the_accumulator() -> None:
    streaming, strategy = intake("float32-delta")
    fold(streaming, update(1), 1.0)
    accumulator = strategy._sum["w"]
    assert accumulator.dtype == np.float32
    assert strategy.finalize()["w"] is accumulator
