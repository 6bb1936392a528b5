"""Protocol ``TensorChunk`` messages from and to ``bastion.framing.Frame``, for tests that
speak to a server through the generated stubs (the services themselves encode chunks
straight to wire bytes and read them in place: ``bastion.transport.encoded``)."""

from __future__ import annotations

from collections.abc import Iterable

from bastion.framing import Frame, assemble_frames
from bastion.tensors import Weights
from bastion.transport import bastion_pb2 as pb


def to_chunk(frame: Frame) -> pb.TensorChunk:
    return pb.TensorChunk(
        name=frame.name,
        dtype=frame.dtype,
        shape=frame.shape,
        offset=frame.offset,
        data=bytes(frame.data),
    )


def from_chunk(chunk: pb.TensorChunk) -> Frame:
    return Frame(chunk.name, chunk.dtype, tuple(chunk.shape), chunk.offset, chunk.data)


def assemble(chunks: Iterable[pb.TensorChunk], max_total_bytes: int) -> Weights:
    """Rebuild weights from an untrusted stream of chunks (sizes checked before allocation)."""
    return assemble_frames((from_chunk(chunk) for chunk in chunks), max_total_bytes)
