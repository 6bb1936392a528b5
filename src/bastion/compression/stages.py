"""Compression stages: each turns a flat float64 vector into named wire parts and back.

A stage encodes the ``values`` part and may add side parts (``indices``, ``range``).
Sparsifiers pick coordinates (``TopK`` by magnitude, per client; ``RandomK`` from a
public seed, the same at every client); value codecs shrink each value (``Float16``,
``BFloat16``, ``Quantize8``). ``decode`` receives parts from an untrusted peer and
checks them before use.
"""

from __future__ import annotations

import enum
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from bastion.compression import blockwise
from bastion.compression.errors import CompressionError
from bastion.errors import UpdateRejected
from bastion.spec import compression as spec

Parts = dict[str, np.ndarray]
VALUES = "values"


class StageKind(enum.Enum):
    """A stage's kind; the values are the plan schema's, so one set of composition rules holds."""

    SPARSIFIER = spec.SPARSIFIER
    VALUE_CODEC = spec.VALUE_CODEC


@dataclass(frozen=True)
class StageContext:
    """Which tensor is being coded, how many elements it has, and in which round."""

    tensor: str
    size: int
    round_number: int


def _part(parts: Parts, name: str, context: StageContext, dtype: str | None = None) -> np.ndarray:
    if name not in parts:
        raise UpdateRejected(f"compressed tensor {context.tensor!r} lacks its {name!r} part")
    array = parts[name]
    if array.ndim != 1 or (dtype is not None and array.dtype != np.dtype(dtype)):
        raise UpdateRejected(
            f"compressed tensor {context.tensor!r}: part {name!r} must be a 1-D {dtype} array"
        )
    return array


class Stage(ABC):
    """One encode/decode step of a compression pipeline."""

    name: ClassVar[str]
    kind: ClassVar[StageKind]
    #: Whether every client's coordinates are the same, so masked vectors can be summed.
    shared_pattern: ClassVar[bool] = True
    #: Wire parts this stage adds next to ``values``.
    side_parts: ClassVar[tuple[str, ...]] = ()

    def coded_size(self, size: int) -> int:
        """How many values the stages after this one code, for a tensor of ``size``."""
        return size

    @abstractmethod
    def encode(self, parts: Parts, context: StageContext) -> Parts:
        """Replace ``parts[VALUES]`` (and add side parts) with the compressed form."""

    @abstractmethod
    def decode(self, parts: Parts, context: StageContext) -> Parts:
        """Undo ``encode``: restore ``parts[VALUES]`` as float64, dropping side parts."""


def _keep_count(fraction: float, size: int) -> int:
    return min(size, max(1, math.ceil(fraction * size)))


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise CompressionError(f"sparsification fraction must be in (0, 1], got {fraction}")


@dataclass(frozen=True)
class TopK(Stage):
    """Keep the ``fraction`` of coordinates largest in magnitude (Aji and Heafield 2017)."""

    fraction: float
    name: ClassVar[str] = "topk"
    kind: ClassVar[StageKind] = StageKind.SPARSIFIER
    shared_pattern: ClassVar[bool] = False
    side_parts: ClassVar[tuple[str, ...]] = ("indices",)

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def coded_size(self, size: int) -> int:
        return _keep_count(self.fraction, size)

    def encode(self, parts: Parts, context: StageContext) -> Parts:
        values = parts[VALUES]
        k = _keep_count(self.fraction, values.size)
        indices = np.sort(np.argpartition(np.abs(values), values.size - k)[values.size - k :])
        index_dtype = np.uint32 if values.size <= 1 << 32 else np.uint64
        return {**parts, VALUES: values[indices], "indices": indices.astype(index_dtype)}

    def decode(self, parts: Parts, context: StageContext) -> Parts:
        indices = _part(parts, "indices", context)
        if indices.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise UpdateRejected(f"compressed tensor {context.tensor!r}: indices must be uint32/64")
        values = _part(parts, VALUES, context)
        if indices.size != values.size or indices.size > context.size:
            raise UpdateRejected(f"compressed tensor {context.tensor!r}: indices and values differ")
        if indices.size and (
            int(indices.max()) >= context.size or np.any(indices[1:] <= indices[:-1])
        ):
            raise UpdateRejected(
                f"compressed tensor {context.tensor!r}: indices out of range or not increasing"
            )
        dense = np.zeros(context.size, dtype=np.float64)
        dense[indices.astype(np.intp)] = values
        rest = {k: v for k, v in parts.items() if k != "indices"}
        return {**rest, VALUES: dense}


@dataclass(frozen=True)
class RandomK(Stage):
    """Keep a random ``fraction`` of coordinates, chosen from a public seed and the round.

    Every client keeps the same coordinates, so their vectors still add up (and so it
    composes with secure aggregation). The pattern is public, not secret, so a seeded
    statistical generator is the right tool here.
    """

    fraction: float
    seed: int = 0
    name: ClassVar[str] = "randomk"
    kind: ClassVar[StageKind] = StageKind.SPARSIFIER

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def coded_size(self, size: int) -> int:
        return _keep_count(self.fraction, size)

    def indices(self, context: StageContext) -> np.ndarray:
        """The coordinates every client keeps for this tensor in this round."""
        digest = hashlib.sha256(
            f"bastion/randomk|{self.seed}|{context.round_number}|{context.tensor}".encode()
        ).digest()
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))
        k = _keep_count(self.fraction, context.size)
        return np.sort(rng.choice(context.size, size=k, replace=False))

    def encode(self, parts: Parts, context: StageContext) -> Parts:
        return {**parts, VALUES: parts[VALUES][self.indices(context)]}

    def decode(self, parts: Parts, context: StageContext) -> Parts:
        indices = self.indices(context)
        values = _part(parts, VALUES, context)
        if values.size != indices.size:
            raise UpdateRejected(
                f"compressed tensor {context.tensor!r}: {values.size} values for "
                f"{indices.size} random-k coordinates"
            )
        dense = np.zeros(context.size, dtype=np.float64)
        dense[indices] = values
        return {**parts, VALUES: dense}


def _finite(values: np.ndarray, context: StageContext, codec: str, hint: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise CompressionError(f"tensor {context.tensor!r} overflows {codec}: {hint}")
    return values


@dataclass(frozen=True)
class Float16(Stage):
    """Cast to IEEE half precision (range +-65504, about 3 decimal digits)."""

    name: ClassVar[str] = "float16"
    kind: ClassVar[StageKind] = StageKind.VALUE_CODEC

    def encode(self, parts: Parts, context: StageContext) -> Parts:
        with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
            half = parts[VALUES].astype(np.float16)
        _finite(half, context, "float16", "values beyond +-65504; use bfloat16")
        return {**parts, VALUES: half}

    def decode(self, parts: Parts, context: StageContext) -> Parts:
        return {**parts, VALUES: _part(parts, VALUES, context, "float16").astype(np.float64)}


@dataclass(frozen=True)
class BFloat16(Stage):
    """bfloat16 (float32's range, 8 bits of mantissa), sent as its raw 16 bits in a uint16."""

    name: ClassVar[str] = "bfloat16"
    kind: ClassVar[StageKind] = StageKind.VALUE_CODEC

    def encode(self, parts: Parts, context: StageContext) -> Parts:
        with np.errstate(over="ignore"):
            single = parts[VALUES].astype(np.float32)
        _finite(single, context, "bfloat16", "values beyond float32's range")
        bits = single.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
        codes = rounded.astype(np.uint16)
        _finite(_bfloat16_to_float(codes), context, "bfloat16", "values beyond float32's range")
        return {**parts, VALUES: codes}

    def decode(self, parts: Parts, context: StageContext) -> Parts:
        codes = _part(parts, VALUES, context, "uint16")
        return {**parts, VALUES: _bfloat16_to_float(codes).astype(np.float64)}


def _bfloat16_to_float(codes: np.ndarray) -> np.ndarray:
    return (codes.astype(np.uint32) << np.uint32(16)).view(np.float32)


@dataclass(frozen=True)
class Quantize8(Stage):
    """8-bit affine quantization with a per-tensor [min, max] range (error <= step / 2)."""

    name: ClassVar[str] = "quantize8"
    kind: ClassVar[StageKind] = StageKind.VALUE_CODEC
    side_parts: ClassVar[tuple[str, ...]] = ("range",)

    def encode(self, parts: Parts, context: StageContext) -> Parts:
        values = parts[VALUES]
        low = float(values.min()) if values.size else 0.0
        high = float(values.max()) if values.size else 0.0
        step = (high - low) / 255.0
        codes = np.zeros(values.size) if step == 0 else np.rint((values - low) / step)
        return {**parts, VALUES: codes.astype(np.uint8), "range": np.array([low, high])}

    def decode(self, parts: Parts, context: StageContext) -> Parts:
        codes = _part(parts, VALUES, context, "uint8")
        bounds = _part(parts, "range", context, "float64")
        if bounds.size != 2 or not np.isfinite(bounds).all() or bounds[0] > bounds[1]:
            raise UpdateRejected(f"compressed tensor {context.tensor!r}: invalid 8-bit range")
        low, high = float(bounds[0]), float(bounds[1])
        values = low + codes.astype(np.float64) * ((high - low) / 255.0)
        rest = {k: v for k, v in parts.items() if k != "range"}
        return {**rest, VALUES: values}


@runtime_checkable
class StreamingCodec(Protocol):
    """A value codec that decodes chunk by chunk, so a receiver never holds a tensor's
    float64 values whole (the aggregator adds each chunk to the model as it goes)."""

    def decode_chunks(
        self, parts: Parts, context: StageContext
    ) -> Iterator[tuple[int, np.ndarray]]: ...


@dataclass(frozen=True)
class BlockQuantizer(Stage):
    """Block-wise quantization with one float32 scale per ``block_size`` values
    (``bastion.compression.blockwise``: codebooks and their error bounds)."""

    block_size: int = blockwise.DEFAULT_BLOCK_SIZE
    codebook: ClassVar[blockwise.Codebook]
    kind: ClassVar[StageKind] = StageKind.VALUE_CODEC
    side_parts: ClassVar[tuple[str, ...]] = ("scales",)

    def __post_init__(self) -> None:
        low, high = spec.BLOCK_SIZE_RANGE
        if not low <= self.block_size <= high:
            raise CompressionError(
                f"{self.name}: block_size must be in [{low}, {high}], got {self.block_size}"
            )

    def encode(self, parts: Parts, context: StageContext) -> Parts:
        codes, scales = blockwise.quantize(
            parts[VALUES], self.codebook, self.block_size, context.tensor
        )
        return {**parts, VALUES: codes, "scales": scales}

    def decode_chunks(
        self, parts: Parts, context: StageContext
    ) -> Iterator[tuple[int, np.ndarray]]:
        codes = _part(parts, VALUES, context, "uint8")
        scales = _part(parts, "scales", context, "float32")
        blockwise.check_payload(
            codes, scales, context.size, self.codebook, self.block_size, context.tensor
        )
        return blockwise.dequantize_chunks(
            codes, scales, context.size, self.codebook, self.block_size, tensor=context.tensor
        )

    def decode(self, parts: Parts, context: StageContext) -> Parts:
        values = np.empty(context.size, dtype=np.float64)
        for start, chunk in self.decode_chunks(parts, context):
            values[start : start + chunk.size] = chunk
        rest = {k: v for k, v in parts.items() if k != "scales"}
        return {**rest, VALUES: values}


@dataclass(frozen=True)
class Blockwise8(BlockQuantizer):
    """8 bits per value, symmetric absmax levels k/127: error <= absmax(block) / 254."""

    name: ClassVar[str] = "blockwise8"
    codebook: ClassVar[blockwise.Codebook] = blockwise.UNIFORM8


@dataclass(frozen=True)
class Blockwise4(BlockQuantizer):
    """4 bits per value, symmetric absmax levels k/7: error <= absmax(block) / 14."""

    name: ClassVar[str] = "blockwise4"
    codebook: ClassVar[blockwise.Codebook] = blockwise.UNIFORM4


@dataclass(frozen=True)
class NormalFloat4(BlockQuantizer):
    """4 bits per value, QLoRA's NF4 levels: error <= 0.1519 * absmax(block)."""

    name: ClassVar[str] = "nf4"
    codebook: ClassVar[blockwise.Codebook] = blockwise.NF4


def with_size(context: StageContext, size: int) -> StageContext:
    """The same tensor and round, with ``size`` values to code (after a sparsifier)."""
    return replace(context, size=size)
