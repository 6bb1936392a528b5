"""Fixed-point quantization of float vectors into the ring Z_{2^k} that secure aggregation sums in.

Masks only cancel in modular integer arithmetic, so each client maps its floats to
integers first. A value ``x`` is clipped to ``[-C, C]`` and mapped to
``q = round((x + C) * scale)`` with ``scale = (2^b - 1) / (2C)``, so ``q`` lies in
``[0, 2^b - 1]``. Precision: one client's value is off by at most ``1 / (2 * scale)``
(half a step, step ``2C / (2^b - 1)``); a sum of ``n`` values by at most ``n / (2 * scale)``
relative to the sum of the *clipped* values.

Overflow bound: the server sees the sum modulo ``2^k``; it equals the true integer sum
only if ``n * (2^b - 1) < 2^k``. We also keep it below ``2^53`` so the sum converts to
float64 exactly. ``check_capacity`` refuses any ``n`` beyond that and names the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bastion.privacy.errors import QuantizationOverflow, SecAggError

#: Ring sizes we support; both are native numpy widths, so addition wraps by itself.
SUPPORTED_MODULUS_BITS = (32, 64)
_FLOAT64_EXACT_BITS = 53


def ring_dtype(modulus_bits: int) -> np.dtype:
    """The unsigned dtype whose wrap-around addition is arithmetic modulo ``2^modulus_bits``."""
    if modulus_bits not in SUPPORTED_MODULUS_BITS:
        raise SecAggError(
            f"modulus_bits={modulus_bits} is not supported; use one of {SUPPORTED_MODULUS_BITS}"
        )
    return np.dtype(np.uint32 if modulus_bits == 32 else np.uint64)


@dataclass(frozen=True)
class FixedPointQuantizer:
    """Clip to ``[-clip, clip]`` and quantize to ``bits`` bits inside a ``2^modulus_bits`` ring."""

    clip: float
    bits: int = 20
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise SecAggError(f"quantization clip range must be a positive number, got {self.clip}")
        ring_dtype(self.modulus_bits)
        if not 1 <= self.bits < min(self.modulus_bits, _FLOAT64_EXACT_BITS):
            raise SecAggError(
                f"quantization bits={self.bits} must be between 1 and "
                f"{min(self.modulus_bits, _FLOAT64_EXACT_BITS) - 1} for a "
                f"{self.modulus_bits}-bit ring"
            )

    @property
    def dtype(self) -> np.dtype:
        return ring_dtype(self.modulus_bits)

    @property
    def levels(self) -> int:
        """Largest quantized value, ``2^b - 1``."""
        return (1 << self.bits) - 1

    @property
    def scale(self) -> float:
        """Quantization steps per unit: ``(2^b - 1) / (2C)``."""
        return self.levels / (2.0 * self.clip)

    @property
    def capacity(self) -> int:
        """Most inputs whose sum neither wraps the ring nor loses float64 exactness."""
        limit = min(1 << self.modulus_bits, 1 << _FLOAT64_EXACT_BITS) - 1
        return limit // self.levels

    def check_capacity(self, count: int) -> None:
        """Refuse to sum ``count`` inputs when their sum could wrap around the modulus."""
        if count > self.capacity:
            raise QuantizationOverflow(
                f"{count} clients x {self.levels} (largest {self.bits}-bit value) = "
                f"{count * self.levels} does not fit a {self.modulus_bits}-bit ring "
                f"(at most {self.capacity} clients fit): lower quantization bits or use "
                f"modulus_bits=64"
            )

    def error_bound(self, count: int) -> float:
        """Largest per-coordinate error of a dequantized sum of ``count`` clipped inputs."""
        return count / (2.0 * self.scale)

    def quantize(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Clip and quantize a float vector to ring elements (one word per value).

        Works in place on one float64 copy; ``out`` (ring words) receives the result.
        """
        array = np.array(values, dtype=np.float64)
        if not np.isfinite(array).all():
            raise SecAggError("cannot quantize NaN or infinite values for secure aggregation")
        np.clip(array, -self.clip, self.clip, out=array)
        array += self.clip
        array *= self.scale
        np.rint(array, out=array)
        if out is None:
            return array.astype(self.dtype)
        np.copyto(out, array, casting="unsafe")
        return out

    def dequantize_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """The float sum of ``count`` clipped inputs from their ring sum (undoes ``count * C``)."""
        if count < 1:
            raise SecAggError(f"a sum needs at least one input, got count={count}")
        self.check_capacity(count)
        words = np.asarray(total)
        if words.dtype != self.dtype:
            raise SecAggError(f"expected a {self.dtype} ring sum, got {words.dtype}")
        values = words.astype(np.float64)
        values /= self.scale
        values -= count * self.clip
        return values
