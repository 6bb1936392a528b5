"""The one model representation: an ordered ``dict[str, numpy.ndarray]``.

This module owns everything that turns weights into bytes and back: the wire
framing (raw little-endian buffers behind a (name, dtype, shape) header, cut into
chunks of a few MiB so a model of any size streams), safetensors checkpoints, and
the checks an untrusted update must pass. Nothing here ever unpickles.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from bastion.errors import BastionError, ProtocolError, UpdateRejected

Weights = dict[str, np.ndarray]
"""Named arrays in a stable order; every framework adapter converts to and from this."""

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024

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


BLOCK_ELEMENTS = 1 << 20


def blocks(array: np.ndarray, size: int = BLOCK_ELEMENTS) -> Iterator[slice]:
    """Slices of a flat view, so whole-model passes need only a block of temporary memory."""
    for start in range(0, array.size, size):
        yield slice(start, min(start + size, array.size))


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
    data: bytes


def iter_frames(
    weights: Mapping[str, np.ndarray], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[Frame]:
    """Cut ``weights`` into frames of at most ``chunk_bytes`` payload each, in order."""
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
            yield Frame(name, dtype, shape, offset, buffer[offset : offset + chunk_bytes].tobytes())


class FrameAssembler:
    """Rebuilds weights from frames sent by an untrusted peer.

    Frames must arrive in order, tensor after tensor, each complete before the next
    begins; sizes are checked against the header and against ``max_total_bytes`` before
    any buffer is allocated, so a hostile header cannot make us allocate gigabytes.
    """

    def __init__(self, max_total_bytes: int, max_tensors: int = 100_000) -> None:
        self._max_total = max_total_bytes
        self._max_tensors = max_tensors
        self._total = 0
        self._weights: Weights = {}
        self._current: tuple[str, np.dtype, tuple[int, ...], np.ndarray, int] | None = None
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
        buffer[self._filled : end] = np.frombuffer(frame.data, dtype=np.uint8)
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
        if len(frame.shape) > 16 or any(d < 0 for d in frame.shape):
            raise ProtocolError(f"tensor {frame.name!r}: invalid shape {frame.shape}")
        if len(self._weights) >= self._max_tensors:
            raise ProtocolError(f"more than {self._max_tensors} tensors")
        dtype = WIRE_DTYPES[frame.dtype]
        expected = math.prod(frame.shape) * dtype.itemsize
        if self._total + expected > self._max_total:
            raise ProtocolError(
                f"update larger than the limit of {self._max_total} bytes "
                f"(tensor {frame.name!r} would bring it to {self._total + expected})"
            )
        self._total += expected
        # Allocated once at its final size (only after the limit check above).
        self._current = (
            frame.name,
            dtype,
            tuple(frame.shape),
            np.empty(expected, np.uint8),
            expected,
        )
        self._filled = 0
        if expected == 0:
            self._finish()

    def _finish(self) -> None:
        assert self._current is not None
        name, dtype, shape, buffer, _ = self._current
        array = buffer.view(dtype).reshape(shape)  # shares the buffer: no copy
        self._weights[name] = array.astype(dtype.newbyteorder("="), copy=False)
        self._current = None

    def result(self) -> Weights:
        """The assembled weights; an error if a tensor is incomplete."""
        if self._current is not None:
            raise ProtocolError(f"stream ended inside tensor {self._current[0]!r}")
        return self._weights


def assemble_frames(frames: Iterable[Frame], max_total_bytes: int) -> Weights:
    """Rebuild weights from an untrusted sequence of frames (sizes checked before allocation)."""
    assembler = FrameAssembler(max_total_bytes)
    for frame in frames:
        assembler.add(frame)
    return assembler.result()


# --------------------------------------------------------------------------- checkpoints


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old or the new file, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_SAFETENSORS_DTYPES = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
}


def save_checkpoint(
    path: Path, weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically write ``weights`` as a safetensors file; metadata values are strings.

    The file is streamed tensor by tensor (8-byte header length, JSON header, raw
    little-endian buffers), so saving a model never builds a second copy of it in memory.
    """
    meta = {"bastion.order": json.dumps(list(weights)), **dict(metadata or {})}
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, array in weights.items():
        dtype = dtype_name(array.dtype)
        size = int(array.size) * WIRE_DTYPES[dtype].itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": [int(d) for d in array.shape],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(struct.pack("<Q", len(encoded)))
            handle.write(encoded)
            for array in weights.values():
                wire = WIRE_DTYPES[dtype_name(array.dtype)]
                contiguous = np.ascontiguousarray(array, dtype=wire).reshape(-1)
                handle.write(contiguous.view(np.uint8).data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def load_checkpoint(path: Path) -> tuple[Weights, dict[str, str]]:
    """Read a safetensors checkpoint tensor by tensor, keeping the order it was saved with."""
    path = Path(path)
    if not path.exists():
        raise BastionError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise BastionError(f"checkpoint {path} is not a valid safetensors file: {exc}") from None
    order = [n for n in json.loads(metadata.pop("bastion.order", "[]")) if n in arrays]
    names = order + [n for n in arrays if n not in order]
    return {n: arrays[n] for n in names}, metadata
