"""The one model representation: an ordered ``dict[str, numpy.ndarray]``.

This module owns everything that turns weights into bytes and back on the wire
(raw little-endian buffers behind a (name, dtype, shape) header, cut into chunks of
a few MiB so a model of any size streams) and the checks an untrusted update must
pass; checkpoints on disk are ``bastion.storage.checkpoints``. Nothing here ever unpickles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import blake3
import numpy as np

from bastion.buffers import RetiredBuffers
from bastion.errors import ProtocolError, UpdateRejected

Weights = dict[str, np.ndarray]
"""Named arrays in a stable order; every framework adapter converts to and from this."""

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

#: dtypes allowed on the wire, by their canonical name. Object and void dtypes never are.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    )
}


def dtype_name(dtype: np.dtype) -> str:
    """Canonical wire name of a numpy dtype, or an error if it may not travel."""
    name = np.dtype(dtype).name
    if name not in WIRE_DTYPES:
        raise ProtocolError(f"dtype {name!r} cannot be sent; allowed: {', '.join(WIRE_DTYPES)}")
    return name


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor must look like: name, dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * WIRE_DTYPES[self.dtype].itemsize


def spec_of(weights: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """The specs of ``weights`` in their order."""
    return [
        TensorSpec(n, dtype_name(a.dtype), tuple(int(d) for d in a.shape))
        for n, a in weights.items()
    ]


def total_bytes(weights: Mapping[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in weights.values())


def validate_update(expected: Iterable[TensorSpec], update: Mapping[str, np.ndarray]) -> None:
    """Refuse an update whose names, shapes or dtypes differ from ``expected``, or that is not finite."""
    expected = list(expected)
    want = [s.name for s in expected]
    got = list(update)
    if set(want) != set(got):
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}")
        if extra:
            parts.append(f"unexpected tensors {extra[:5]}")
        raise UpdateRejected("; ".join(parts))
    for spec in expected:
        array = update[spec.name]
        if np.dtype(array.dtype).name != spec.dtype:
            raise UpdateRejected(
                f"tensor {spec.name!r} has dtype {np.dtype(array.dtype).name}, expected {spec.dtype}"
            )
        if tuple(array.shape) != spec.shape:
            raise UpdateRejected(
                f"tensor {spec.name!r} has shape {tuple(array.shape)}, expected {spec.shape}"
            )
        if array.dtype.kind == "f" and not all_finite(array):
            raise UpdateRejected(f"tensor {spec.name!r} contains NaN or infinite values")


def tensor_hasher() -> blake3.blake3:
    """The hash of ``weights_digest``. BLAKE3, not SHA-256: the aggregator hashes every
    update and every model it makes, and BLAKE3 hashes 3.5x as fast (0.18 against 0.61 s
    per GiB measured), outside the GIL."""
    return blake3.blake3()


def hash_values(hasher: blake3.blake3, values: np.ndarray) -> None:
    """Add a contiguous array's bytes to ``hasher`` in place (no copy)."""
    hasher.update(values.reshape(-1).view(np.uint8).data)


def bytes_digest(data: bytes) -> str:
    """``tensor_hasher``'s digest of a blob that stands for an update (a masked input)."""
    hasher = tensor_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    """BLAKE3 (``tensor_hasher``) over each tensor's (name, dtype, shape) header and
    little-endian bytes, in order: equal exactly when the weights are (what the audit log
    records)."""
    digest = tensor_hasher()
    for name, array in weights.items():
        dtype = dtype_name(array.dtype)
        digest.update(digest_header(name, dtype, array.shape))
        hash_values(digest, np.ascontiguousarray(array, dtype=WIRE_DTYPES[dtype]))
    return digest.hexdigest()


def digest_header(name: str, dtype: str, shape: Iterable[int]) -> bytes:
    """What ``weights_digest`` hashes before a tensor's bytes (also hashed chunk by chunk)."""
    header = f"{name}\0{dtype}\0{','.join(str(d) for d in shape)}\0".encode()
    return len(header).to_bytes(8, "little") + header


BLOCK_ELEMENTS = 1 << 20


def blocks(array: np.ndarray, size: int = BLOCK_ELEMENTS) -> Iterator[slice]:
    """Slices of a flat view, so whole-model passes need only a block of temporary memory."""
    for start in range(0, array.size, size):
        yield slice(start, min(start + size, array.size))


class Scratch:
    """Reusable temporary blocks, one per dtype, for passes that work block by block.

    A fresh temporary per block is a fresh mapping: above glibc's mmap threshold (which the
    aggregator pins at 1 MiB) its pages are faulted in and zeroed again for every block.
    Not thread-safe: one owner, or calls under the owner's lock.
    """

    def __init__(self) -> None:
        self._blocks: dict[np.dtype, np.ndarray] = {}

    def take(self, dtype: np.dtype | type, size: int) -> np.ndarray:
        """``size`` elements of ``dtype`` (contents undefined), valid until the next take."""
        dtype = np.dtype(dtype)
        block = self._blocks.get(dtype)
        if block is None or block.size < size:
            block = self._blocks[dtype] = np.empty(size, dtype)
        return block[:size]


#: Below this mean square a float32 block may have lost its squares to underflow.
_TINY_SQUARE = 2.0**-100


def squared_distance64(
    values: np.ndarray, base: np.ndarray | None, scratch: Scratch, size: int = BLOCK_ELEMENTS
) -> float:
    """||values - base||^2 (||values||^2 without ``base``) of flat arrays, block by block
    through ``scratch``, the blocks' sums added in float64.

    Float32 blocks are differenced and squared in float32 and summed in float64: at most
    two float32 roundings per element (a relative error under 2e-7), at under half a
    float64 pass's time (0.17-0.21 against 0.37-0.49 s per GiB measured). A block whose
    float32 squares may have overflowed or underflowed (its sum is not finite, or tiny) is
    done again in float64: finite values far apart still give the float64 distance, and a
    NaN still gives NaN.
    Not ``np.dot``: after each call OpenBLAS's threads spin, and on a 2-core aggregator
    they took a third of its CPU while uploads streamed in."""
    single = values.dtype == np.float32 and (base is None or base.dtype == np.float32)
    total = 0.0
    for part in blocks(values, size):
        if single:
            square = scratch.take(np.float32, part.stop - part.start)
            with np.errstate(over="ignore", invalid="ignore"):  # such a block is summed again
                if base is None:
                    np.square(values[part], out=square)
                else:
                    np.square(np.subtract(values[part], base[part], out=square), out=square)
                block_total = float(np.add.reduce(square, dtype=np.float64))
            if math.isfinite(block_total) and block_total >= _TINY_SQUARE * square.size:
                total += block_total
                continue
        diff = scratch.take(np.float64, part.stop - part.start)
        if base is None:
            np.copyto(diff, values[part])
        else:
            np.subtract(values[part], base[part], out=diff, dtype=np.float64)
        total += float(np.square(diff, out=diff).sum())
    return total


def all_finite(array: np.ndarray) -> bool:
    flat = array.reshape(-1)
    return all(bool(np.isfinite(flat[part]).all()) for part in blocks(flat))


# --------------------------------------------------------------------------- framing


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
