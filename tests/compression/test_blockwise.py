"""Block-wise 8/4-bit quantization round-trips within its documented bound, and refuses
what it cannot code (non-finite values, magnitudes beyond float32) or decode (malformed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bastion.compression import CompressionError, ErrorFeedback, Pipeline, TopK
from bastion.compression import blockwise as bw
from bastion.compression.stages import (
    VALUES,
    BlockQuantizer,
    Blockwise4,
    Blockwise8,
    NormalFloat4,
    StageContext,
)
from bastion.errors import UpdateRejected

CODECS = [Blockwise8, Blockwise4, NormalFloat4]
#: bitsandbytes' NF4 table (``bitsandbytes.functional``), as QLoRA publishes it.
NF4_TABLE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


def _roundtrip(stage: BlockQuantizer, values: np.ndarray) -> np.ndarray:
    context = StageContext("w", values.size, 1)
    return stage.decode(stage.encode({VALUES: values}, context), context)[VALUES]


def test_codebooks_and_their_bounds() -> None:
    np.testing.assert_array_equal(bw.NF4.levels, NF4_TABLE)
    np.testing.assert_allclose(bw.normal_float_levels(4), NF4_TABLE, atol=1e-6)
    assert bw.UNIFORM8.half_gap == pytest.approx(1 / 254)
    assert bw.UNIFORM4.half_gap == pytest.approx(1 / 14)
    assert bw.NF4.half_gap == pytest.approx(0.15190, abs=1e-4)
    assert bw.bits_per_value(bw.UNIFORM8, 64) == 8.5
    assert bw.bits_per_value(bw.NF4, 64) == 4.5


# Values spanning float32's range: a mantissa in [-1, 1] times 10^e, e in [-45, 38].
magnitudes = st.builds(
    lambda base, exponent: (base * 10.0**exponent).astype(np.float64),
    arrays(np.float64, st.integers(0, 300), elements=st.floats(-1, 1, allow_nan=False)),
    st.integers(-45, 38),
)


@settings(max_examples=80, deadline=None)
@given(
    values=magnitudes,
    codec=st.sampled_from(CODECS),
    block_size=st.sampled_from([8, 13, 64, 256]),
)
def test_round_trip_error_is_within_the_documented_bound(
    values: np.ndarray, codec: type[BlockQuantizer], block_size: int
) -> None:
    stage = codec(block_size=block_size)
    decoded = _roundtrip(stage, values)
    assert decoded.shape == values.shape and decoded.dtype == np.float64
    bound = bw.worst_error(values, stage.codebook, block_size)
    assert np.all(np.abs(decoded - values) <= bound)
    assert np.all(decoded[values == 0] == 0)  # exact zeros stay zero


@settings(max_examples=40, deadline=None)
@given(
    constant=st.floats(allow_nan=False, allow_infinity=False, width=32),
    size=st.integers(1, 200),
    codec=st.sampled_from(CODECS),
)
def test_constant_blocks_and_zeros_decode_exactly(
    constant: float, size: int, codec: type[BlockQuantizer]
) -> None:
    values = np.full(size, constant, dtype=np.float64)  # float32-representable: exact scale
    np.testing.assert_array_equal(_roundtrip(codec(), values), values)


def test_sizes_that_are_not_multiples_of_the_block_and_empty_tensors() -> None:
    rng = np.random.default_rng(0)
    for codec in CODECS:
        for size in (0, 1, 7, 63, 64, 65, 129):
            values = rng.normal(size=size)
            codes, scales = bw.quantize(values, codec.codebook, 64)
            assert codes.size == bw.packed_bytes(size, codec.codebook.bits)
            assert scales.size == -(-size // 64) and scales.dtype == np.float32
            decoded = _roundtrip(codec(), values)
            assert np.all(np.abs(decoded - values) <= bw.worst_error(values, codec.codebook, 64))


def test_a_block_of_huge_and_tiny_values_keeps_the_tiny_ones_within_the_bound() -> None:
    values = np.array([3e38, 1e-30, -1e-40, 0.0, -3e38, 5.0] * 11)
    for codec in CODECS:
        decoded = _roundtrip(codec(block_size=8), values)
        assert np.all(np.abs(decoded - values) <= bw.worst_error(values, codec.codebook, 8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39, -4e38])
def test_non_finite_values_and_magnitudes_beyond_float32_are_refused(bad: float) -> None:
    values = np.array([0.5, bad, 1.0])
    for codec in CODECS:
        with pytest.raises(CompressionError, match="'w'"):
            _roundtrip(codec(), values)


def test_nf4_has_a_smaller_mean_error_than_uniform4_on_normal_values() -> None:
    values = np.random.default_rng(1).normal(size=64 * 512)
    nf4 = np.abs(_roundtrip(NormalFloat4(), values) - values).mean()
    uniform = np.abs(_roundtrip(Blockwise4(), values) - values).mean()
    assert nf4 < uniform


def test_block_size_is_checked() -> None:
    with pytest.raises(CompressionError, match="block_size"):
        Blockwise8(block_size=4)


def _payload(codec: BlockQuantizer, size: int = 21) -> tuple[dict, StageContext]:
    context = StageContext("w", size, 1)
    values = np.linspace(-1, 1, size)
    return codec.encode({VALUES: values}, context), context


@pytest.mark.parametrize(
    "codec, tamper, message",
    [
        (Blockwise8(8), lambda p: {**p, VALUES: p[VALUES][:-1]}, "code bytes"),
        (Blockwise8(8), lambda p: {**p, VALUES: p[VALUES].astype(np.int8)}, "uint8"),
        (Blockwise8(8), lambda p: {**p, "scales": p["scales"][:-1]}, "block scales"),
        (Blockwise8(8), lambda p: {**p, "scales": -p["scales"]}, "finite and >= 0"),
        (Blockwise8(8), lambda p: {**p, "scales": p["scales"] * np.nan}, "finite and >= 0"),
        (Blockwise8(8), lambda p: {**p, VALUES: np.full_like(p[VALUES], 255)}, "beyond"),
        (Blockwise4(8), lambda p: {**p, VALUES: np.full_like(p[VALUES], 0x0F)}, "beyond"),
        (NormalFloat4(8), lambda p: {**p, VALUES: np.full_like(p[VALUES], 0xFF)}, "padding"),
        (NormalFloat4(8), lambda p: {k: v for k, v in p.items() if k != "scales"}, "scales"),
    ],
)
def test_malformed_payloads_are_rejected(codec: BlockQuantizer, tamper, message: str) -> None:
    payload, context = _payload(codec)
    with pytest.raises(UpdateRejected, match=message):
        codec.decode(tamper(payload), context)


def test_chunked_decoding_matches_whole_decoding() -> None:
    values = np.random.default_rng(2).normal(size=1001)
    for codec in CODECS:
        codes, scales = bw.quantize(values, codec.codebook, 16)
        whole = bw.dequantize(codes, scales, values.size, codec.codebook, 16)
        chunks = list(
            bw.dequantize_chunks(codes, scales, values.size, codec.codebook, 16, chunk_values=40)
        )
        assert len(chunks) == 32 and [start for start, _ in chunks][:3] == [0, 32, 64]
        np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), whole)


def test_behind_a_sparsifier_only_the_kept_values_are_coded() -> None:
    values = np.random.default_rng(3).normal(size=(50, 7)).astype(np.float32)
    pipeline = Pipeline([TopK(0.2), NormalFloat4(block_size=8)])
    payload = pipeline.encode({"w": values}, 1)
    assert payload["w::values"].size == -(-70 // 2)  # 70 kept values, two per byte
    decoded = pipeline.decode(payload, {"w": values}, 1)["w"].reshape(-1)
    kept = payload["w::indices"].astype(np.intp)
    exact = values.reshape(-1).astype(np.float64)[kept]
    assert np.all(np.abs(decoded[kept] - exact) <= bw.worst_error(exact, bw.NF4, 8))


def test_error_feedback_keeps_what_4_bits_dropped() -> None:
    rng = np.random.default_rng(4)
    feedback = ErrorFeedback(Pipeline([Blockwise4()]))
    deltas = [{"w": rng.normal(size=300).astype(np.float32)} for _ in range(5)]
    sent = np.zeros(300)
    for round_number, delta in enumerate(deltas, 1):
        payload = feedback.encode(delta, round_number)
        sent += feedback.pipeline.decode(payload, delta, round_number)["w"]
    total = sum(d["w"].astype(np.float64) for d in deltas)
    np.testing.assert_allclose(sent + feedback.residual["w"], total, atol=1e-5)
