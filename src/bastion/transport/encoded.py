"""Tensor chunks encoded straight to wire bytes, the global model encoded once per round,
and result chunks read with their payload left where it arrived.

A ``TensorChunk`` built as a protobuf message costs three copies of its payload (the
array's ``tobytes``, the message's own field, its serialization). Its payload is the
message's last field, so the encoding is the header fields' encoding followed by the
payload's tag, length and bytes: ``encode_chunk`` writes that with one copy, from a
``memoryview`` of the array. The gRPC handlers that send chunks take these bytes as they
are (``passthrough``). ``RoundModelCache`` keeps the global model's encoded chunks for the
round, so N collaborators cost one encoding, not N (models up to ``max_bytes`` only: the
cache holds one extra copy of the model).

Parsing a chunk, protobuf copies the payload into the message, and its ``data`` field
hands out another copy, under the GIL both times. ``decode_result_part`` (the aggregator)
and ``decode_model_chunk`` (a site) scan the fields, give protobuf the message without
its payload to parse and check (a few dozen bytes), and hand on a read-only
``memoryview`` of the payload where it arrived. A layout the scan does not follow (groups,
keys or lengths longer than protobuf reads) goes to protobuf whole, which refuses it or
reads it as it always did.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass

from google.protobuf.message import Message

from bastion.framing import Frame
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


def _chunk_parts(frame: Frame) -> list[bytes | memoryview]:
    """The pieces of ``frame``'s ``TensorChunk`` encoding, its payload last and uncopied."""
    header = pb.TensorChunk(
        name=frame.name, dtype=frame.dtype, shape=frame.shape, offset=frame.offset
    ).SerializeToString()
    size = len(frame.data)
    if not size:
        return [header]
    return [header, _DATA_TAG, _varint(size), frame.data]


def encode_chunk(frame: Frame) -> bytes:
    """``frame`` as the wire bytes of a ``TensorChunk`` (equal to the message's own
    serialization), copying the payload once."""
    return b"".join(_chunk_parts(frame))


def encode_result_chunk(frame: Frame) -> bytes:
    """``frame`` as the wire bytes of a ``ResultChunk`` carrying it as its tensor, copying
    the payload once: the tensor's length is known before its bytes are joined."""
    parts = _chunk_parts(frame)
    size = sum(len(part) for part in parts)
    return b"".join((_TENSOR_TAG, _varint(size), *parts))


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


@dataclass(frozen=True)
class ResultPart:
    """One message of a result stream: its header, or one tensor chunk (``frame``, its
    payload a view of the received bytes); neither for a message that sets no part."""

    header: pb.ResultHeader | None = None
    frame: Frame | None = None


#: Field numbers: ``ResultChunk.header``, ``ResultChunk.tensor``, ``TensorChunk.data``.
_HEADER_FIELD, _TENSOR_FIELD, _DATA_FIELD = 1, 2, 5


def decode_result_part(raw: bytes) -> ResultPart:
    """A gRPC deserializer for ``SendResult``: protobuf parses (and refuses what is
    malformed) the message without its payload, which is handed on as a view of ``raw``."""
    scanned = _scan_result(memoryview(raw).toreadonly())
    message = pb.ResultChunk.FromString(raw if scanned is None else scanned[0])
    part = message.WhichOneof("part")
    if part == "header":
        return ResultPart(header=message.header)
    if part != "tensor":
        return ResultPart()
    tensor = message.tensor
    data = tensor.data if scanned is None else scanned[1]
    return ResultPart(
        frame=Frame(tensor.name, tensor.dtype, tuple(tensor.shape), tensor.offset, data)
    )


def decode_model_chunk(raw: bytes) -> Frame:
    """A gRPC deserializer for ``GetModel`` on a site: a ``TensorChunk`` parsed by protobuf
    without its payload, the payload a view of ``raw``."""
    scanned = _scan_chunk(memoryview(raw).toreadonly())
    chunk = pb.TensorChunk.FromString(raw if scanned is None else scanned[0])
    data: bytes | memoryview = chunk.data if scanned is None else scanned[1]
    return Frame(chunk.name, chunk.dtype, tuple(chunk.shape), chunk.offset, data)


#: (field number, wire type, value, the field's whole bytes: key, length and value)
Field = tuple[int, int, memoryview, memoryview]


def _scan_result(raw: memoryview) -> tuple[bytes, memoryview] | None:
    """A ``ResultChunk``'s bytes with every tensor's payload left out, and ``tensor.data``
    as protobuf reads it: the last ``data`` of the tensor occurrences since the last header
    (a repeated message field merges; setting the header clears the tensor). None where
    the scan does not follow the layout: protobuf then reads the whole message."""
    fields = _fields(raw)
    if fields is None:
        return None
    kept: list[bytes | memoryview] = []
    data: memoryview = raw[:0]
    for number, wire_type, value, whole in fields:
        if number == _HEADER_FIELD and wire_type == 2:
            data = raw[:0]
        elif number == _TENSOR_FIELD and wire_type == 2:
            scanned = _scan_chunk(value, data)
            if scanned is None:
                return None
            tensor, data = scanned
            kept.extend((_TENSOR_TAG, _varint(len(tensor)), tensor))
            continue
        kept.append(whole)
    return b"".join(kept), data


def _scan_chunk(
    raw: memoryview, before: memoryview | None = None
) -> tuple[bytes, memoryview] | None:
    """A ``TensorChunk``'s bytes without its ``data`` fields, and the last ``data``
    (``before``, or empty, if none); None where the scan does not follow the layout."""
    fields = _fields(raw)
    if fields is None:
        return None
    data = before if before is not None else raw[:0]
    kept: list[memoryview] = []
    for number, wire_type, value, whole in fields:
        if number == _DATA_FIELD and wire_type == 2:
            data = value
        else:
            kept.append(whole)
    return b"".join(kept), data


#: The longest keys and lengths protobuf reads (5 bytes: 32 bits), and the longest varint
#: values (10 bytes: 64 bits). Past them the scan leaves the message to protobuf.
_MAX_KEY_BYTES, _MAX_VALUE_BYTES = 5, 10


def _fields(buffer: memoryview) -> list[Field] | None:
    """Each field of a message, its values as views; None on a wire type it does not
    skip, a key or length past protobuf's 32 bits, or a field that runs past the end."""
    fields = []
    position, end = 0, len(buffer)
    while position < end:
        start = position
        try:
            key, position = _read_varint(buffer, position, _MAX_KEY_BYTES)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, after = _read_varint(buffer, position, _MAX_VALUE_BYTES)
            elif wire_type == 1:
                after = position + 8
            elif wire_type == 5:
                after = position + 4
            elif wire_type == 2:
                length, position = _read_varint(buffer, position, _MAX_KEY_BYTES)
                after = position + length
            else:
                return None
        except (IndexError, ValueError):
            return None
        if key >= 1 << 32 or after > end:
            return None
        fields.append((number, wire_type, buffer[position:after], buffer[start:after]))
        position = after
    return fields


def _read_varint(buffer: memoryview, position: int, most_bytes: int) -> tuple[int, int]:
    value, shift, last = 0, 0, position + most_bytes
    while position < last:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise ValueError("a varint longer than the scan reads")
