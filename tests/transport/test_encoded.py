"""Chunks encoded straight to wire bytes equal the protobuf messages' own encoding; result
chunks decoded in place read what protobuf reads."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from support.chunks import from_chunk, to_chunk

from bastion.framing import Frame, assemble_frames, iter_frames
from bastion.transport import bastion_pb2 as pb
from bastion.transport.encoded import (
    RoundModelCache,
    decode_model_chunk,
    decode_result_part,
    encode_chunk,
    encode_result_chunk,
    passthrough,
)


def _model() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(300_000, dtype=np.float32).reshape(600, 500),
        "b": np.arange(7, dtype=np.float64),
        "empty": np.zeros((0, 3), dtype=np.int32),
    }


def test_encoded_chunks_are_the_messages_own_bytes() -> None:
    for frame in iter_frames(_model(), 100_000):
        assert encode_chunk(frame) == to_chunk(frame).SerializeToString()
        message = pb.ResultChunk(tensor=to_chunk(frame))
        assert encode_result_chunk(frame) == message.SerializeToString()


def test_lent_frames_encode_like_copied_ones_and_assemble_back() -> None:
    model = _model()
    lent = [encode_chunk(f) for f in iter_frames(model, 65_536, lend=True)]
    copied = [encode_chunk(f) for f in iter_frames(model, 65_536)]
    assert lent == copied
    back = assemble_frames((from_chunk(pb.TensorChunk.FromString(c)) for c in lent), 1 << 30)
    assert all(np.array_equal(back[name], model[name]) for name in model)


def test_passthrough_sends_bytes_as_they_are_and_serializes_messages() -> None:
    message = pb.ModelRequest(round=3)
    assert passthrough(b"raw") == b"raw"
    assert passthrough(message) == message.SerializeToString()


def test_the_round_model_is_encoded_once_per_round() -> None:
    model = _model()
    read: list[int] = []

    def frames(round_number: int):  # type: ignore[no-untyped-def]
        read.append(round_number)
        return iter_frames(model, 100_000)

    cache = RoundModelCache()
    first = list(cache.chunks(1, 1_200_084, frames(1)))
    again = list(cache.chunks(1, 1_200_084, iter([Frame("x", "float32", (1,), 0, b"")])))
    assert first == again and read == [1]
    assert list(cache.chunks(2, 1_200_084, frames(2))) == first and read == [1, 2]


def test_a_model_over_the_limit_is_encoded_per_download() -> None:
    cache = RoundModelCache(max_bytes=1000)
    model = _model()
    one = list(cache.chunks(1, 1_200_084, iter_frames(model, 100_000)))
    two = list(cache.chunks(1, 1_200_084, iter_frames(model, 100_000)))
    assert one == two and len(one) == 14


def _as_parsed(raw: bytes) -> tuple[object, ...]:
    """What protobuf itself reads from ``raw``: the part, and the tensor's fields."""
    message = pb.ResultChunk.FromString(raw)
    part = message.WhichOneof("part")
    if part != "tensor":
        return (part, message.header if part == "header" else None)
    t = message.tensor
    return (part, t.name, t.dtype, tuple(t.shape), t.offset, bytes(t.data))


def _as_decoded(raw: bytes) -> tuple[object, ...]:
    decoded = decode_result_part(raw)
    if decoded.frame is None:
        return ("header" if decoded.header is not None else None, decoded.header)
    f = decoded.frame
    return ("tensor", f.name, f.dtype, f.shape, f.offset, bytes(f.data))


def test_a_result_chunk_decodes_with_its_payload_a_view_of_the_received_bytes() -> None:
    frame = next(iter_frames(_model(), 100_000))
    raw = encode_result_chunk(frame)
    decoded = decode_result_part(raw)
    assert decoded.frame is not None and decoded.header is None
    assert isinstance(decoded.frame.data, memoryview) and decoded.frame.data.readonly
    assert decoded.frame.data.obj is raw  # not copied out
    assert _as_decoded(raw) == _as_parsed(raw)
    header = pb.ResultChunk(header=pb.ResultHeader(round=3, task="train")).SerializeToString()
    assert _as_decoded(header) == _as_parsed(header)


tensors = st.builds(
    pb.TensorChunk,
    name=st.text(max_size=8),
    dtype=st.sampled_from(["float32", "int64", ""]),
    shape=st.lists(st.integers(0, 2**40), max_size=3),
    offset=st.integers(0, 2**62),
    data=st.binary(max_size=300),
)
parts = st.one_of(
    st.builds(lambda t: pb.ResultChunk(tensor=t).SerializeToString(), tensors),
    st.builds(
        lambda r: pb.ResultChunk(header=pb.ResultHeader(round=r)).SerializeToString(),
        st.integers(0, 2**31),
    ),
    st.binary(max_size=40),  # stray bytes: unknown fields, or malformed
)


@settings(max_examples=400, deadline=None)
@given(st.lists(parts, min_size=1, max_size=4))
def test_decoding_reads_what_protobuf_reads_from_any_concatenation(pieces: list[bytes]) -> None:
    """Concatenated messages merge (a repeated tensor merges, a header clears it): the
    payload found in place is the one protobuf would hand out, or the message is refused
    by both."""
    raw = b"".join(pieces)
    try:
        expected = _as_parsed(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_result_part(raw)
        return
    assert _as_decoded(raw) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(tensors.map(pb.TensorChunk.SerializeToString), st.binary(max_size=40)),
        min_size=1,
        max_size=3,
    )
)
def test_a_model_chunk_decodes_to_what_protobuf_reads(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    try:
        t = pb.TensorChunk.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_model_chunk(raw)
        return
    frame = decode_model_chunk(raw)
    assert (frame.name, frame.dtype, frame.shape, frame.offset, bytes(frame.data)) == (
        t.name,
        t.dtype,
        tuple(t.shape),
        t.offset,
        bytes(t.data),
    )


def _overlong(value: int, size: int) -> bytes:
    """``value`` as a varint padded to ``size`` bytes (protobuf accepts some, not all)."""
    out = bytearray()
    for index in range(size):
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if index < size - 1 else 0))
    return bytes(out)


@pytest.mark.parametrize("size", [1, 2, 5, 6, 9, 10, 11, 12])
def test_padded_varints_decode_as_protobuf_reads_them_or_are_refused_by_both(size: int) -> None:
    payload = b"\x01\x02\x03\x04"
    offset = b"\x20" + _overlong(7, size)  # a varint value: protobuf reads up to 10 bytes
    tensor = b"\x0a\x01w" + offset + _overlong(0x2A, size) + _overlong(len(payload), size) + payload
    for raw in (tensor, b"\x12" + _overlong(len(tensor), size) + tensor):
        is_result = raw is not tensor
        try:
            expected = _as_parsed(raw) if is_result else pb.TensorChunk.FromString(raw)
        except DecodeError:
            with pytest.raises(DecodeError):
                (decode_result_part if is_result else decode_model_chunk)(raw)
            continue
        if is_result:
            assert _as_decoded(raw) == expected
        else:
            frame = decode_model_chunk(raw)
            assert isinstance(expected, pb.TensorChunk)
            assert (frame.name, frame.offset, bytes(frame.data)) == (
                expected.name,
                expected.offset,
                expected.data,
            )
