"""Each stage round-trips within its documented error, and refuses malformed payloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bastion.compression import (
    BFloat16,
    CompressionError,
    Float16,
    Pipeline,
    Quantize8,
    RandomK,
    TopK,
)
from bastion.errors import UpdateRejected

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def _roundtrip(pipeline: Pipeline, tensors: dict[str, np.ndarray], round_number: int = 1) -> dict:
    return pipeline.decode(pipeline.encode(tensors, round_number), tensors, round_number)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=finite))
def test_float16_and_bfloat16_keep_their_relative_precision(values: np.ndarray) -> None:
    for stage, bits in ((Float16(), 11), (BFloat16(), 8)):
        decoded = _roundtrip(Pipeline([stage]), {"w": values})["w"]
        exact = values.astype(np.float64)
        # Round-to-nearest: relative error at most 2^-bits, plus a floor for subnormals.
        floor = 6e-8 if stage.name == "float16" else 1e-40  # half the smallest subnormal
        tolerance = np.abs(exact) * 2.0**-bits + floor
        assert np.all(np.abs(decoded - exact) <= tolerance)


def test_bfloat16_rounds_to_nearest_even() -> None:
    values = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 3.0e38], dtype=np.float32)
    decoded = _roundtrip(Pipeline([BFloat16()]), {"w": values})["w"]
    np.testing.assert_array_equal(decoded[:3], [1.0, 1.0 + 2**-6, -2.5])
    assert decoded[3] == pytest.approx(3.0e38, rel=2**-8)


def test_float16_overflow_is_refused_with_a_hint() -> None:
    with pytest.raises(CompressionError, match="use bfloat16"):
        Pipeline([Float16()]).encode({"w": np.array([1e6], dtype=np.float32)}, 0)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 300), elements=st.floats(-50, 50)))
def test_quantize8_error_is_at_most_half_a_step(values: np.ndarray) -> None:
    decoded = _roundtrip(Pipeline([Quantize8()]), {"w": values})["w"]
    step = (values.max() - values.min()) / 255
    assert np.max(np.abs(decoded - values)) <= step / 2 + 1e-12


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 400), elements=st.floats(-10, 10)),
    st.floats(0.01, 1.0),
)
def test_topk_keeps_the_largest_magnitudes(values: np.ndarray, fraction: float) -> None:
    pipeline = Pipeline([TopK(fraction)])
    payload = pipeline.encode({"w": values}, 0)
    decoded = pipeline.decode(payload, {"w": values}, 0)["w"]
    kept = np.flatnonzero(decoded)
    k = payload["w::indices"].size
    assert k == max(1, int(np.ceil(fraction * values.size))) or k == values.size
    np.testing.assert_array_equal(decoded[payload["w::indices"].astype(int)], payload["w::values"])
    dropped = np.setdiff1d(np.arange(values.size), payload["w::indices"])
    if dropped.size and kept.size:
        assert np.max(np.abs(values[dropped])) <= np.min(
            np.abs(values[payload["w::indices"].astype(int)])
        )


def test_topk_with_8_bit_values_shrinks_a_float32_tensor_about_tenfold() -> None:
    rng = np.random.default_rng(0)
    tensors = {"w": rng.normal(size=(100, 100)).astype(np.float32)}
    pipeline = Pipeline([TopK(0.02), Quantize8()])
    payload = pipeline.encode(tensors, 0)
    size = sum(a.nbytes for a in payload.values())
    assert size < 40_000 / 10 * 1.2  # 200 uint32 indices + 200 uint8 codes + range
    assert _roundtrip(pipeline, tensors)["w"].shape == (100, 100)


def test_randomk_pattern_is_shared_per_round_and_changes_across_rounds() -> None:
    stage = RandomK(0.1, seed=42)
    a = Pipeline([stage]).encode({"w": np.arange(1000.0)}, 5)["w::values"]
    b = Pipeline([RandomK(0.1, seed=42)]).encode({"w": np.arange(1000.0)}, 5)["w::values"]
    c = Pipeline([stage]).encode({"w": np.arange(1000.0)}, 6)["w::values"]
    np.testing.assert_array_equal(a, b)  # arange: the values are the kept indices
    assert a.size == 100 and not np.array_equal(a, c)


def test_integer_tensors_travel_unchanged() -> None:
    tensors: dict[str, np.ndarray] = {
        "steps": np.array([7, 9], dtype=np.int64),
        "w": np.ones(4, dtype=np.float32),
    }
    pipeline = Pipeline([TopK(0.5), Float16()])
    payload = pipeline.encode(tensors, 0)
    assert "steps::raw" in payload
    np.testing.assert_array_equal(pipeline.decode(payload, tensors, 0)["steps"], [7, 9])


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p.pop("w::indices"), "does not match pipeline"),
        (lambda p: p.update({"w::indices": np.array([0, 99], dtype=np.uint32)}), "out of range"),
        (lambda p: p.update({"w::indices": np.array([3, 1], dtype=np.uint32)}), "not increasing"),
        (lambda p: p.update({"w::indices": np.array([1, 2], dtype=np.int8)}), "uint32/64"),
        (
            lambda p: p.update({"w::values": np.array([1.0, np.nan], dtype=np.float32)}),
            "non-finite",
        ),
        (lambda p: p.update({"extra::values": np.zeros(1)}), "unexpected"),
    ],
)
def test_malformed_payloads_are_rejected(tamper: object, message: str) -> None:
    tensors = {"w": np.arange(8, dtype=np.float32)}
    pipeline = Pipeline([TopK(0.25)])
    payload = pipeline.encode(tensors, 0)
    tamper(payload)  # type: ignore[operator]
    with pytest.raises(UpdateRejected, match=message):
        pipeline.decode(payload, tensors, 0)


def test_bad_quantization_range_is_rejected() -> None:
    tensors = {"w": np.arange(8, dtype=np.float64)}
    pipeline = Pipeline([Quantize8()])
    payload = pipeline.encode(tensors, 0)
    payload["w::range"] = np.array([5.0, 1.0])
    with pytest.raises(UpdateRejected, match="invalid 8-bit range"):
        pipeline.decode(payload, tensors, 0)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_sparsification_fraction_must_be_meaningful(fraction: float) -> None:
    with pytest.raises(CompressionError):
        TopK(fraction)
    with pytest.raises(CompressionError):
        RandomK(fraction)
