"""Wire framing and checkpoints: exact round trips, and hostile input refused cleanly."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.errors import BastionError, ProtocolError, UpdateRejected
from bastion.framing import (
    DEFAULT_CHUNK_BYTES,
    LARGEST_ADAPTIVE_CHUNK_BYTES,
    SMALLEST_CHUNK_BYTES,
    Chunking,
    Frame,
    FrameAssembler,
    iter_frames,
)
from bastion.spec.network import NetworkSpec
from bastion.storage.checkpoints import RESERVED_NAME, load_checkpoint, save_checkpoint
from bastion.tensors import WIRE_DTYPES, Scratch, spec_of, squared_distance64, validate_update

arrays = hnp.arrays(
    dtype=st.sampled_from(sorted(WIRE_DTYPES)),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7),
)
weight_dicts = st.dictionaries(st.text(min_size=1, max_size=12), arrays, min_size=1, max_size=5)


@settings(max_examples=100, deadline=None)
@given(weights=weight_dicts, chunk=st.integers(min_value=1, max_value=64))
def test_frames_round_trip_exactly(weights: dict[str, np.ndarray], chunk: int) -> None:
    assembler = FrameAssembler(max_total_bytes=1 << 30)
    for frame in iter_frames(weights, chunk_bytes=chunk):
        assert len(frame.data) <= chunk
        assembler.add(frame)
    result = assembler.result()
    assert list(result) == list(weights)
    for name, value in weights.items():
        assert result[name].dtype == value.dtype and result[name].shape == value.shape
        assert result[name].tobytes() == value.tobytes()  # bitwise, NaN payloads included


@settings(max_examples=60, deadline=None)
@given(weights=weight_dicts.filter(lambda weights: RESERVED_NAME not in weights))
def test_checkpoints_round_trip_exactly(
    weights: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, weights, {"round": "3"})
    loaded, metadata = load_checkpoint(path)
    assert metadata == {"round": "3"}
    assert list(loaded) == list(weights)
    for name, value in weights.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        assert loaded[name].tobytes() == value.tobytes()
        # arrays of their own, so the engine may reuse them as buffers (bastion.buffers)
        assert loaded[name].base is None and loaded[name].flags.writeable


def test_a_checkpoint_from_the_reference_writer_loads_and_a_cut_one_is_refused(
    tmp_path: Path,
) -> None:
    from safetensors.numpy import save_file

    weights = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "steps": np.array(9, dtype=np.int64),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 4), dtype=np.float64),
    }
    path = tmp_path / "ref.safetensors"
    save_file(weights, str(path), metadata={"round": "2"})
    loaded, metadata = load_checkpoint(path)
    assert metadata == {"round": "2"}
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(BastionError, match="ref.safetensors"):
        load_checkpoint(path)


def test_a_tensor_named_like_the_format_metadata_is_refused_not_written_corrupt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "model.safetensors"
    weights = {"w": np.ones(2, dtype=np.float32), RESERVED_NAME: np.zeros(1, dtype=np.float32)}
    with pytest.raises(BastionError, match="reserves for its metadata"):
        save_checkpoint(path, weights)
    assert not path.exists()


def test_checkpoint_is_readable_by_the_reference_safetensors_reader(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    weights = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4).T,
        "b": np.array(7, dtype=np.int64),
    }
    save_checkpoint(tmp_path / "m.safetensors", weights)
    reference = load_file(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(reference["a"], weights["a"])
    assert reference["b"].shape == ()


def test_checkpoint_digest_is_the_written_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    weights = {
        "small": np.arange(5, dtype=np.int16),
        "large": np.linspace(0, 1, 3 << 20, dtype=np.float32),  # hashed on a second thread
        "big_endian": np.arange(4, dtype=">f4"),
    }
    for round_number in range(3):  # the later writes go into the spare of the one before
        weights["large"][round_number] = round_number + 7
        digest = save_checkpoint(path, weights, {"round": str(round_number)}, reuse=True)
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
        loaded, metadata = load_checkpoint(path)
        assert metadata == {"round": str(round_number)}
        np.testing.assert_array_equal(loaded["large"], weights["large"])


def test_failed_checkpoint_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": np.ones(3, dtype=np.float32)})
    with pytest.raises(ProtocolError):
        save_checkpoint(path, {"w": np.ones(3, dtype=np.float32), "bad": np.array(["text"])})
    loaded, _ = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["w"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(BastionError, match="not a valid safetensors file"):
        load_checkpoint(path)
    with pytest.raises(BastionError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([Frame("w", "object", (1,), 0, b"x")], "not allowed"),
        ([Frame("w", "float32", (1 << 30, 1 << 10), 0, b"")], "larger than the limit"),
        ([Frame("w", "float32", (2,), 4, b"\x00" * 4)], "offset 4, expected 0"),
        ([Frame("w", "float32", (1,), 0, b"\x00" * 8)], "more bytes than its shape"),
        (
            [
                Frame("w", "float32", (2,), 0, b"\x00" * 4),
                Frame("v", "float32", (1,), 0, b"\x00" * 4),
            ],
            "ended before",
        ),
        (
            [
                Frame("w", "float32", (1,), 0, b"\x00" * 4),
                Frame("w", "float32", (1,), 0, b"\x00" * 4),
            ],
            "sent twice",
        ),
        ([Frame("w", "float32", (-1,), 0, b"")], "invalid shape"),
        ([Frame("", "float32", (1,), 0, b"\x00" * 4)], "empty"),
    ],
)
def test_hostile_frames_are_refused(frames: list[Frame], message: str) -> None:
    assembler = FrameAssembler(max_total_bytes=1 << 20)
    with pytest.raises(ProtocolError, match=message):
        for frame in frames:
            assembler.add(frame)
        assembler.result()


def test_truncated_stream_is_refused() -> None:
    assembler = FrameAssembler(max_total_bytes=1 << 20)
    assembler.add(Frame("w", "float32", (4,), 0, b"\x00" * 8))
    with pytest.raises(ProtocolError, match="stream ended inside tensor 'w'"):
        assembler.result()


def test_validate_update_names_each_problem() -> None:
    reference = {"w": np.zeros((2, 2), np.float32), "n": np.zeros((), np.int64)}
    spec = spec_of(reference)
    validate_update(spec, {"w": np.ones((2, 2), np.float32), "n": np.array(3)})
    with pytest.raises(UpdateRejected, match="unexpected tensors \\['x'\\]"):
        validate_update(spec, {**reference, "x": np.zeros(1)})
    with pytest.raises(UpdateRejected, match="NaN"):
        validate_update(spec, {"w": np.full((2, 2), np.nan, np.float32), "n": np.array(1)})


@settings(max_examples=50, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.integers(0, 40), elements=st.floats(-1e6, 1e6, width=32)),
    size=st.integers(1, 9),
)
def test_squared_distance_matches_float64_reference_across_blocks(
    values: np.ndarray, size: int
) -> None:
    base = np.linspace(-3, 3, values.size, dtype=np.float32)
    scratch = Scratch()  # one scratch for both calls, as the aggregator's folds share one
    expected = float(((values.astype(np.float64) - base.astype(np.float64)) ** 2).sum())
    # float32 differences and squares: two roundings of 2**-24 at most per element
    assert squared_distance64(values, base, scratch, size) == pytest.approx(expected, rel=2e-7)
    norm = float((values.astype(np.float64) ** 2).sum())
    assert squared_distance64(values, None, scratch, size) == pytest.approx(norm, rel=2e-7)


@pytest.mark.parametrize(
    ("values", "base"),
    [
        ([3e38, -3e38, 1.0], [-3e38, 3e38, 0.0]),  # differences past float32's range
        ([1e20, 2.0], None),  # squares past float32's range
        ([1e-30, -2e-25], [0.0, 1e-25]),  # squares below float32's smallest normal
    ],
)
def test_squared_distance_of_float32_extremes_is_the_float64_one(
    values: list[float], base: list[float] | None
) -> None:
    array = np.array(values, np.float32)
    reference = np.array(base if base is not None else [0.0] * len(values), np.float32)
    expected = float(((array.astype(np.float64) - reference.astype(np.float64)) ** 2).sum())
    found = squared_distance64(array, None if base is None else reference, Scratch())
    assert found == pytest.approx(expected, rel=1e-12)


def test_squared_distance_of_a_nan_is_nan() -> None:
    values = np.array([1.0, np.nan], np.float32)
    with np.errstate(invalid="ignore"):
        assert math.isnan(squared_distance64(values, np.zeros(2, np.float32), Scratch()))


@settings(max_examples=200, deadline=None)
@given(
    smaller=st.integers(min_value=0, max_value=1 << 34),
    extra=st.integers(min_value=0, max_value=1 << 34),
    largest=st.integers(min_value=1, max_value=64 << 20),
)
def test_adaptive_chunks_grow_with_the_transfer_and_never_pass_the_receivers_limit(
    smaller: int, extra: int, largest: int
) -> None:
    chunking = Chunking(largest)
    small, large = chunking.for_bytes(smaller), chunking.for_bytes(smaller + extra)
    # Every receiver accepts ``largest``: a sender never goes past it, whatever it sends
    # (a compressed update is smaller than the model, so its chunks are no larger).
    assert 1 <= small <= large <= largest


def test_adaptive_chunks_pipeline_a_small_model_and_cap_a_large_one() -> None:
    chunking = Chunking(4 << 20)
    four_mb_model = {"w": np.zeros(1_000_000, dtype=np.float32)}
    frames = list(iter_frames(four_mb_model, chunking.for_weights(four_mb_model)))
    assert len(frames) == 8 and all(len(f.data) == 512 << 10 for f in frames[:-1])
    # Under the aggregator's 1 MiB mmap threshold, framing included: reused heap pages.
    assert chunking.for_bytes(3 << 30) == LARGEST_ADAPTIVE_CHUNK_BYTES < (1 << 20) - (32 << 10)
    assert chunking.for_bytes(1000) == SMALLEST_CHUNK_BYTES  # one message, not dozens
    # A fixed size (the plan's chunk_mib as a number) is used as it is.
    assert Chunking(1 << 20, adaptive=False).for_bytes(1000) == 1 << 20


def test_the_plan_chooses_adaptive_or_fixed_chunks() -> None:
    auto = NetworkSpec()
    assert auto.chunking == Chunking(DEFAULT_CHUNK_BYTES, adaptive=True)
    fixed = NetworkSpec(chunk_mib=0.5)
    assert fixed.chunking == Chunking(512 << 10, adaptive=False)
    for wrong in (0, 65, "big"):
        with pytest.raises(ValueError, match="chunk_mib"):
            NetworkSpec(chunk_mib=wrong)
