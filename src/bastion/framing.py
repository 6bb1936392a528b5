"""Weights on the wire as frames: cut into chunks sized for the pipeline, and rebuilt from
an untrusted peer's frames with every size checked before anything is allocated.

A frame is one chunk of one tensor behind its (name, dtype, shape) header, raw
little-endian bytes (``tensors.WIRE_DTYPES``); the transports put frames in their own
messages (``transport.encoded``). Nothing here ever unpickles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from bastion.buffers import RetiredBuffers
from bastion.errors import ProtocolError
from bastion.tensors import WIRE_DTYPES, TensorSpec, Weights, dtype_name, total_bytes

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024

#: Adaptive chunking cuts a transfer into about this many chunks, so the receiver checks and
#: folds one chunk while the next is on the wire, and holds less of it at a time ...
PIPELINE_CHUNKS = 8
#: ... but none smaller than this, where per-message work shows. Measured with 10
#: collaborators and a 4 MB model (``benchmarks/scale.py chunks``): 512 KiB chunks gave
#: rounds of 0.35-0.38 s, 128-256 KiB 0.42-0.49 s, 4 MiB 0.47-0.49 s with 2.7x the
#: aggregator's memory above idle.
SMALLEST_CHUNK_BYTES = 256 * 1024
#: ... and none larger than this: with its message framing a chunk stays below the 1 MiB
#: at which the aggregator has glibc map each allocation afresh (``aggregator.memory``), so
#: its buffers come from reused heap pages. Page faults on fresh 4 MiB buffers were a third
#: of the aggregator's CPU in a 1 GiB round; 960 KiB chunks took that round from 13-14 s
#: to 10-12 s on a 2-core VM, with less memory (``benchmarks/scale.py overhead``).
LARGEST_ADAPTIVE_CHUNK_BYTES = 960 * 1024


@dataclass(frozen=True)
class Frame:
    """One chunk of one tensor. The first chunk of each tensor carries its header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    data: bytes | memoryview


@dataclass(frozen=True)
class Chunking:
    """How a sender cuts what it sends: ``largest`` bytes at most per chunk (the size every
    receiver accepts), and with ``adaptive`` smaller chunks for smaller transfers.

    Larger chunks buy nothing past a few MiB and cost memory: a 256 MiB model between two
    collaborators took about as long with 1, 4 or 16 MiB chunks (4.5-5.5 s a round), and
    64 MiB chunks were slower (7.4 s) and raised the aggregator's peak above idle from 1.1x
    to 3.4x the model (``benchmarks/scale.py chunks``).
    """

    largest: int = DEFAULT_CHUNK_BYTES
    adaptive: bool = True

    def for_bytes(self, payload_bytes: int) -> int:
        """The chunk size for a transfer of ``payload_bytes``: a fixed size is used as it is;
        an adaptive one is the power of two giving about ``PIPELINE_CHUNKS`` chunks, between
        ``SMALLEST_CHUNK_BYTES`` and ``LARGEST_ADAPTIVE_CHUNK_BYTES`` (and ``largest``)."""
        if not self.adaptive:
            return self.largest
        target = max(payload_bytes // PIPELINE_CHUNKS, 1)
        size = min(1 << (target - 1).bit_length(), LARGEST_ADAPTIVE_CHUNK_BYTES, self.largest)
        return max(size, min(SMALLEST_CHUNK_BYTES, self.largest))

    def for_weights(self, weights: Mapping[str, np.ndarray]) -> int:
        """The chunk size for sending ``weights``."""
        return self.for_bytes(total_bytes(weights))


def iter_frames(
    weights: Mapping[str, np.ndarray], chunk_bytes: int = DEFAULT_CHUNK_BYTES, lend: bool = False
) -> Iterator[Frame]:
    """Cut ``weights`` into frames of at most ``chunk_bytes`` payload each, in order.

    ``lend``: each frame's data is a read-only view of the array's buffer instead of a copy
    (for a sender that encodes it at once, while the arrays stay unchanged).
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    for name, array in weights.items():
        dtype = dtype_name(array.dtype)
        buffer = np.ascontiguousarray(array, dtype=WIRE_DTYPES[dtype]).reshape(-1).view(np.uint8)
        shape = tuple(int(d) for d in array.shape)
        if buffer.size == 0:
            yield Frame(name, dtype, shape, 0, b"")
            continue
        for offset in range(0, buffer.size, chunk_bytes):
            part = buffer[offset : offset + chunk_bytes]
            data = part.data.toreadonly() if lend else part.tobytes()
            yield Frame(name, dtype, shape, offset, data)


MAX_DIMENSIONS = 16


def checked_nbytes(name: str, dtype: str, shape: Iterable[int], limit: int) -> int:
    """The byte size of a tensor header, refused before numpy sees a shape that overflows.

    Each dimension and the running product are compared with ``limit`` as Python ints, so
    a shape like ``(0, 2**62, 2**62)`` is an error, not an ``int64`` overflow or a crash.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMENSIONS or any(d < 0 for d in dims):
        raise ProtocolError(f"tensor {name!r}: invalid shape {dims}")
    itemsize = WIRE_DTYPES[dtype].itemsize
    bound = max(limit, 0) // itemsize
    count = 1
    for d in dims:
        if d > bound:
            raise ProtocolError(
                f"tensor {name!r}: shape {dims} is larger than the limit of {limit} bytes"
            )
    for d in dims:
        count *= d
        if count > bound:
            raise ProtocolError(
                f"tensor {name!r}: shape {dims} is larger than the limit of {limit} bytes"
            )
    return count * itemsize


class FrameAssembler:
    """Rebuilds weights from frames sent by an untrusted peer.

    Frames must arrive in order, tensor after tensor, each complete before the next
    begins; sizes are checked against the header and against ``max_total_bytes`` before
    any buffer is allocated, so a hostile header cannot make us allocate gigabytes. With
    ``expected`` (the model's specs), each header must name a tensor of the model with its
    dtype and shape when it arrives, so nothing is allocated for a tensor the model lacks.
    """

    def __init__(
        self,
        max_total_bytes: int,
        max_tensors: int = 100_000,
        expected: Iterable[TensorSpec] | None = None,
        buffers: RetiredBuffers | None = None,
    ) -> None:
        self._max_total = max_total_bytes
        #: where tensor buffers come from, and go back to once assembled
        self._buffers = buffers
        self._allocated: list[np.ndarray] = []
        self._expected = None if expected is None else {s.name: s for s in expected}
        self._max_tensors = (
            max_tensors if self._expected is None else min(max_tensors, len(self._expected))
        )
        self._total = 0
        self._weights: Weights = {}
        self._current: tuple[str, np.dtype, tuple[int, ...], np.ndarray | None, int] | None = None
        self._unknown: str | None = None
        self._stray = False  # whether the current tensor is read past (not in the model)
        self._filled = 0

    def add(self, frame: Frame) -> None:
        if self._current is None or frame.name != self._current[0]:
            self._start(frame)
            if self._current is None:  # an empty tensor is complete at its header
                if frame.data:
                    raise ProtocolError(f"tensor {frame.name!r}: more bytes than its shape holds")
                return
        name, _dtype, _shape, buffer, expected = self._current
        if frame.offset != self._filled:
            raise ProtocolError(
                f"tensor {name!r}: chunk at offset {frame.offset}, expected {self._filled}"
            )
        end = self._filled + len(frame.data)
        if end > expected:
            raise ProtocolError(f"tensor {name!r}: more bytes than its shape holds")
        if not self._stray:
            self._write(buffer, self._filled, frame.data)
        self._filled = end
        if end == expected:
            self._finish()

    def _start(self, frame: Frame) -> None:
        if self._current is not None:
            raise ProtocolError(f"tensor {self._current[0]!r} ended before all its bytes arrived")
        if not frame.name or len(frame.name) > 1024:
            raise ProtocolError("tensor name is empty or longer than 1024 characters")
        if frame.name in self._weights:
            raise ProtocolError(f"tensor {frame.name!r} sent twice")
        if frame.dtype not in WIRE_DTYPES:
            raise ProtocolError(f"tensor {frame.name!r}: dtype {frame.dtype!r} is not allowed")
        if len(self._weights) >= self._max_tensors:
            raise ProtocolError(f"more than {self._max_tensors} tensors")
        dtype = WIRE_DTYPES[frame.dtype]
        expected = checked_nbytes(frame.name, frame.dtype, frame.shape, self._max_total)
        skip = False
        if self._expected is not None:
            spec = self._expected.get(frame.name)
            if spec is None:
                # One stray tensor is read past (never stored) so the refusal can name what
                # is missing too; a second is refused at once.
                if self._unknown is not None:
                    raise ProtocolError(
                        f"unexpected tensors {[self._unknown, frame.name[:64]]}: not in the model"
                    )
                self._unknown = frame.name
                skip = True
            elif frame.dtype != spec.dtype:
                raise ProtocolError(
                    f"tensor {frame.name!r} has dtype {frame.dtype}, expected {spec.dtype}"
                )
            elif tuple(frame.shape) != spec.shape:
                raise ProtocolError(
                    f"tensor {frame.name!r} has shape {tuple(frame.shape)}, expected {spec.shape}"
                )
        if self._total + expected > self._max_total:
            raise ProtocolError(
                f"update larger than the limit of {self._max_total} bytes "
                f"(tensor {frame.name!r} would bring it to {self._total + expected})"
            )
        self._total += expected
        # Allocated once at its final size (only after the limit check above); a stray
        # tensor gets no buffer.
        self._stray = skip
        self._current = (
            frame.name,
            dtype,
            tuple(frame.shape),
            None if skip else self._allocate(frame.name, dtype, tuple(frame.shape), expected),
            expected,
        )
        self._filled = 0
        if expected == 0:
            self._finish()

    def _finish(self) -> None:
        assert self._current is not None
        name, dtype, shape, buffer, _ = self._current
        self._current = None
        if not self._stray:
            self._store(name, dtype, shape, buffer)

    # Where a tensor's bytes go: overridden by readers that fold chunks as they arrive
    # (``bastion.aggregator.streaming``) instead of assembling whole tensors.

    def _allocate(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], nbytes: int
    ) -> np.ndarray | None:
        """The buffer for a tensor whose header passed every check (every byte of it is
        written before the tensor counts as received)."""
        if self._buffers is None:
            return np.empty(nbytes, np.uint8)
        buffer = self._buffers.empty((nbytes,), np.dtype(np.uint8))
        self._allocated.append(buffer)
        return buffer

    def _write(self, buffer: np.ndarray | None, start: int, data: bytes | memoryview) -> None:
        """One chunk's bytes at byte ``start`` of the current tensor (already bounds-checked)."""
        assert buffer is not None
        buffer[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def _store(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], buffer: np.ndarray | None
    ) -> None:
        """A tensor whose bytes all arrived."""
        assert buffer is not None
        array = buffer.view(dtype).reshape(shape)  # shares the buffer: no copy
        self._weights[name] = array.astype(dtype.newbyteorder("="), copy=False)

    def result(self) -> Weights:
        """The assembled weights; an error if a tensor is incomplete."""
        if self._current is not None:
            raise ProtocolError(f"stream ended inside tensor {self._current[0]!r}")
        if self._unknown is not None:
            assert self._expected is not None
            missing = [name for name in self._expected if name not in self._weights]
            raise ProtocolError(
                f"missing tensors {missing[:5]}; unexpected tensors {[self._unknown[:64]]}"
            )
        if self._buffers is not None:
            self._buffers.hold(self._allocated)  # reused once these weights are let go
            self._allocated = []
        return self._weights


def assemble_frames(
    frames: Iterable[Frame],
    max_total_bytes: int,
    expected: Iterable[TensorSpec] | None = None,
    buffers: RetiredBuffers | None = None,
) -> Weights:
    """Rebuild weights from an untrusted sequence of frames (sizes checked before allocation);
    with ``buffers``, into buffers an earlier call assembled into once nothing holds them."""
    assembler = FrameAssembler(max_total_bytes, expected=expected, buffers=buffers)
    for frame in frames:
        assembler.add(frame)
    return assembler.result()
