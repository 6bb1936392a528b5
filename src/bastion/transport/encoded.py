"""Tensor chunks encoded straight to wire bytes, and the global model encoded once per round.

A ``TensorChunk`` built as a protobuf message costs three copies of its payload (the
array's ``tobytes``, the message's own field, its serialization). Its payload is the
message's last field, so the encoding is the header fields' encoding followed by the
payload's tag, length and bytes: ``encode_chunk`` writes that with one copy, from a
``memoryview`` of the array. The gRPC handlers that send chunks take these bytes as they
are (``passthrough``). ``RoundModelCache`` keeps the global model's encoded chunks for the
round, so N collaborators cost one encoding, not N (models up to ``max_bytes`` only: the
cache holds one extra copy of the model).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Iterator

from google.protobuf.message import Message

from bastion.tensors import Frame
from bastion.transport import bastion_pb2 as pb

#: ``TensorChunk.data`` is field 5, length-delimited: (5 << 3) | 2.
_DATA_TAG = b"\x2a"
#: ``ResultChunk.tensor`` is field 2, length-delimited: (2 << 3) | 2.
_TENSOR_TAG = b"\x12"

#: The largest model whose encoded chunks a round keeps (one extra copy of the model): the
#: size up to which the aggregator also affords a float64 accumulator. Larger models are
#: encoded per download from the one global buffer, keeping the aggregator near 2x the model.
CACHE_MAX_BYTES = 32 * 1024 * 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_chunk(frame: Frame) -> bytes:
    """``frame`` as the wire bytes of a ``TensorChunk`` (equal to the message's own
    serialization), copying the payload once."""
    header = pb.TensorChunk(
        name=frame.name, dtype=frame.dtype, shape=frame.shape, offset=frame.offset
    ).SerializeToString()
    size = len(frame.data)
    if not size:
        return header
    return b"".join((header, _DATA_TAG, _varint(size), frame.data))


def encode_result_chunk(frame: Frame) -> bytes:
    """``frame`` as the wire bytes of a ``ResultChunk`` carrying it as its tensor."""
    tensor = encode_chunk(frame)
    return b"".join((_TENSOR_TAG, _varint(len(tensor)), tensor))


def passthrough(message: Message | bytes) -> bytes:
    """A gRPC serializer for streams that carry pre-encoded bytes as well as messages."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


class RoundModelCache:
    """The encoded chunks of the model one round serves, shared by every download.

    ``key`` identifies the model (the round it was served for); a download for another key
    replaces the cache. A model larger than ``max_bytes`` is encoded per download, lazily,
    so serving it holds no extra copy.
    """

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._key: Hashable | None = None
        self._chunks: list[bytes] = []

    def chunks(self, key: Hashable, nbytes: int, frames: Iterable[Frame]) -> Iterator[bytes]:
        """The encoded model for ``key`` (``nbytes`` of tensors); ``frames`` is read only
        when nothing is cached for ``key``."""
        if nbytes > self._max_bytes:
            return (encode_chunk(frame) for frame in frames)
        with self._lock:
            if self._key != key:
                self._key, self._chunks = None, []  # the old round's chunks go first
                self._chunks = [encode_chunk(frame) for frame in frames]
                self._key = key
            return iter(self._chunks)
