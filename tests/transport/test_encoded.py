"""Chunks encoded straight to wire bytes equal the protobuf messages' own encoding."""

from __future__ import annotations

import numpy as np

from bastion.tensors import Frame, assemble_frames, iter_frames
from bastion.transport import bastion_pb2 as pb
from bastion.transport.encoded import (
    RoundModelCache,
    encode_chunk,
    encode_result_chunk,
    passthrough,
)
from bastion.transport.frames import from_chunk, to_chunk


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
