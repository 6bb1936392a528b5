"""Block-wise quantization: 8 or 4 bits per value, one float32 scale per block of values.

Each block of ``block_size`` consecutive values is divided by its absolute maximum
(``absmax``, stored as a float32 ``scale``) and every quotient, in [-1, 1], is replaced
by the nearest level of a codebook (Dettmers et al. 2022, "8-bit Optimizers via
Block-wise Quantization"). A value x decodes to ``scale * level``, so

    |x - decoded| <= scale * h,   h = half the largest gap between neighbouring levels,

and ``scale`` is absmax rounded *up* to float32 (relative 2^-23 more, or at most
2^-149 more for blocks under float32's normal range, 1.2e-38). ``h`` per codebook:

- ``uniform8``: levels k/127 for k in -127..127 (symmetric, absmax): h = 1/254.
- ``uniform4``: levels k/7 for k in -7..7: h = 1/14.
- ``nf4``: the 4-bit NormalFloat levels of QLoRA (Dettmers et al. 2023), quantiles of a
  normal distribution with an exact zero: h = 0.1519 (the gap between -1 and -0.696).
  Its worst case is wider than ``uniform4``'s; its mean error on normally distributed
  values (weights, deltas) is smaller.

Every codebook holds an exact 0, so zero blocks, and zeros within a block, decode to 0.
Non-finite values and blocks beyond float32's range (|x| > 3.4e38) are refused. Codes
travel as uint8 (two 4-bit codes per byte, the first in the low nibble).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from bastion.compression.errors import CompressionError
from bastion.errors import UpdateRejected

#: Blocks of this many values share one scale unless the plan says otherwise.
DEFAULT_BLOCK_SIZE = 64
#: Values decoded at a time by ``dequantize_chunks`` (rounded down to whole blocks).
CHUNK_VALUES = 1 << 16
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def normal_float_levels(bits: int) -> np.ndarray:
    """The NormalFloat codebook of QLoRA (Dettmers et al. 2023, appendix E), in [-1, 1].

    2^(bits-1) positive and 2^(bits-1) - 1 negative quantiles of N(0, 1), plus an exact
    zero, scaled so the extremes are -1 and 1; ``bits=4`` gives the paper's NF4 table.
    """
    count = 1 << bits
    offset = 0.5 * ((1 - 1 / (2 * (count - 1))) + (1 - 1 / (2 * count)))
    normal = NormalDist()
    positive = [normal.inv_cdf(p) for p in np.linspace(offset, 0.5, count // 2 + 1)[:-1]]
    negative = [-normal.inv_cdf(p) for p in np.linspace(offset, 0.5, count // 2)[:-1]]
    levels = np.array(sorted([*positive, 0.0, *negative]), dtype=np.float64)
    return levels / levels.max()


@dataclass(frozen=True)
class Codebook:
    """The levels a block's scaled values are rounded to, and how many bits code one."""

    name: str
    bits: int
    levels: np.ndarray  # sorted, in [-1, 1], with -1, 0 and 1 among them
    uniform: bool  # levels are k / (count // 2) for k = -count//2 .. count//2 (fast rounding)

    @property
    def half_gap(self) -> float:
        """h: the most a scaled value in [-1, 1] lies from its nearest level."""
        return float(np.max(np.diff(self.levels))) / 2

    @property
    def zero_code(self) -> int:
        return int(np.flatnonzero(self.levels == 0.0)[0])

    def error_bound(self, absmax: float | np.ndarray) -> float | np.ndarray:
        """The documented worst-case error for a block whose largest magnitude is ``absmax``."""
        return self.half_gap * (np.asarray(absmax) * (1 + 2.0**-23) + 2.0**-149)


def _uniform(bits: int) -> Codebook:
    top = (1 << (bits - 1)) - 1
    levels = np.arange(-top, top + 1, dtype=np.float64) / top
    return Codebook(f"uniform{bits}", bits, levels, uniform=True)


UNIFORM8 = _uniform(8)
UNIFORM4 = _uniform(4)
#: QLoRA's NF4 levels as bitsandbytes publishes them (``normal_float_levels(4)``, computed
#: in float32): the same table everywhere, so NF4 codes mean the same to every peer.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
NF4 = Codebook("nf4", 4, np.array(NF4_LEVELS, dtype=np.float64), uniform=False)


def blocks_of(count: int, block_size: int) -> int:
    return -(-count // block_size)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that hold ``count`` codes of ``bits`` bits."""
    return count if bits == 8 else -(-count // 2)


def _scales(values: np.ndarray, block_size: int, tensor: str) -> np.ndarray:
    """Each block's absmax rounded up to float32 (so every scaled value lies in [-1, 1])."""
    blocks = blocks_of(values.size, block_size)
    padded = np.zeros(blocks * block_size, dtype=np.float64)
    padded[: values.size] = np.abs(values)
    absmax = padded.reshape(blocks, block_size).max(axis=1)
    if absmax.size and float(absmax.max()) > _FLOAT32_MAX:
        raise CompressionError(
            f"tensor {tensor!r} has values up to {float(absmax.max()):.3g}, beyond the float32 "
            "range of block scales (3.4e38): the update diverged; lower the learning rate"
        )
    scales = absmax.astype(np.float32)
    low = scales.astype(np.float64) < absmax
    scales[low] = np.nextafter(scales[low], np.float32(np.inf))
    return scales


def quantize(
    values: np.ndarray, codebook: Codebook, block_size: int, tensor: str = "values"
) -> tuple[np.ndarray, np.ndarray]:
    """(codes as uint8, packed when 4-bit; one float32 scale per block) of a 1-D array."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise CompressionError(
            f"tensor {tensor!r} holds NaN or infinite values, which cannot be quantized: "
            "the update diverged; check the learning rate and the data"
        )
    scales = _scales(values, block_size, tensor)
    per_value = np.repeat(scales.astype(np.float64), block_size)[: values.size]
    scaled = np.divide(values, per_value, out=np.zeros_like(values), where=per_value > 0)
    np.clip(scaled, -1.0, 1.0, out=scaled)
    if codebook.uniform:
        top = len(codebook.levels) // 2
        codes = (np.rint(scaled * top) + top).astype(np.uint8)
    else:
        midpoints = (codebook.levels[1:] + codebook.levels[:-1]) / 2
        codes = np.searchsorted(midpoints, scaled).astype(np.uint8)
    return _pack(codes, codebook.bits), scales


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    return (codes[0::2] | (codes[1::2] << np.uint8(4))).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, start: int, stop: int) -> np.ndarray:
    """Codes ``start:stop`` (``start`` even) of a packed array."""
    if bits == 8:
        return packed[start:stop]
    part = packed[start // 2 : -(-stop // 2)]
    codes = np.empty(part.size * 2, dtype=np.uint8)
    codes[0::2] = part & np.uint8(0x0F)
    codes[1::2] = part >> np.uint8(4)
    return codes[: stop - start]


def check_payload(
    codes: np.ndarray,
    scales: np.ndarray,
    count: int,
    codebook: Codebook,
    block_size: int,
    tensor: str,
) -> None:
    """Refuse codes and scales from a peer that cannot stand for ``count`` values.

    Codes beyond the codebook are refused by ``dequantize_chunks``, chunk by chunk.
    """
    expected = packed_bytes(count, codebook.bits)
    if codes.ndim != 1 or codes.dtype != np.uint8 or codes.size != expected:
        raise UpdateRejected(
            f"quantized tensor {tensor!r}: expected {expected} uint8 code bytes for {count} "
            f"values, got {codes.size} {codes.dtype}"
        )
    blocks = blocks_of(count, block_size)
    if scales.ndim != 1 or scales.dtype != np.float32 or scales.size != blocks:
        raise UpdateRejected(
            f"quantized tensor {tensor!r}: expected {blocks} float32 block scales, got "
            f"{scales.size} {scales.dtype}"
        )
    if scales.size and (not np.isfinite(scales).all() or float(scales.min()) < 0):
        raise UpdateRejected(f"quantized tensor {tensor!r}: block scales must be finite and >= 0")
    if codebook.bits == 4 and count % 2 and codes[-1] >> 4:
        raise UpdateRejected(f"quantized tensor {tensor!r}: the padding code is not zero")


def dequantize_chunks(
    codes: np.ndarray,
    scales: np.ndarray,
    count: int,
    codebook: Codebook,
    block_size: int,
    chunk_values: int = CHUNK_VALUES,
    tensor: str = "values",
) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, float64 values) chunk by chunk, so a large tensor is never decoded whole.

    Call ``check_payload`` first: the codes and scales come from a peer.
    """
    step = block_size * max(1, chunk_values // block_size)
    if step % 2:  # 4-bit chunks start on a byte boundary
        step *= 2
    for start in range(0, count, step):
        stop = min(count, start + step)
        chunk_codes = _unpack(codes, codebook.bits, start, stop)
        if chunk_codes.size and int(chunk_codes.max()) >= len(codebook.levels):
            raise UpdateRejected(
                f"quantized tensor {tensor!r}: a code beyond the {codebook.name} levels"
            )
        chunk_scales = scales[start // block_size : blocks_of(stop, block_size)]
        per_value = np.repeat(chunk_scales.astype(np.float64), block_size)[: stop - start]
        yield start, codebook.levels[chunk_codes] * per_value


def dequantize(
    codes: np.ndarray, scales: np.ndarray, count: int, codebook: Codebook, block_size: int
) -> np.ndarray:
    """All ``count`` values as float64 (for small tensors and the collaborator's residual)."""
    out = np.empty(count, dtype=np.float64)
    for start, values in dequantize_chunks(codes, scales, count, codebook, block_size):
        out[start : start + values.size] = values
    return out


def worst_error(values: np.ndarray, codebook: Codebook, block_size: int) -> np.ndarray:
    """The documented bound for each value of ``values`` (its block's absmax times h)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    blocks = blocks_of(values.size, block_size)
    padded = np.zeros(blocks * block_size)
    padded[: values.size] = np.abs(values)
    absmax = padded.reshape(blocks, block_size).max(axis=1) if blocks else np.zeros(0)
    return np.repeat(np.asarray(codebook.error_bound(absmax)), block_size)[: values.size]


def bits_per_value(codebook: Codebook, block_size: int) -> float:
    """Wire bits per value, the float32 scales included (8.5 and 4.5 at block size 64)."""
    return codebook.bits + 32 / block_size


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "NF4",
    "UNIFORM4",
    "UNIFORM8",
    "Codebook",
    "bits_per_value",
    "check_payload",
    "dequantize",
    "dequantize_chunks",
    "normal_float_levels",
    "quantize",
    "worst_error",
]
