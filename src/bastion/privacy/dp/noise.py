"""Where differential privacy noise comes from.

The guarantee assumes noise the adversary cannot predict. numpy's PCG64 is a fast
statistical generator, not a CSPRNG: whoever learns its 128-bit state (or enough of
its output) can predict every later draw and subtract the noise. So the default,
``SecureGaussianNoise``, draws uniforms from a ChaCha20 keystream keyed with 256 bits
from ``os.urandom`` and turns them into Gaussians with the Box-Muller transform.
``SeededGaussianNoise`` (numpy, seeded) exists for reproducible tests and simulations
only.

Known limit of both: they sample floating-point Gaussians, which Mironov 2012 ("On
Significance of the Least Significant Bits for Differential Privacy") showed can leak
through the low-order bits of the result; a discrete Gaussian (Canonne, Kamath and
Steinke 2020) closes that gap and is not implemented here. Box-Muller from 53-bit
uniforms also truncates the tails at about 8.6 standard deviations (mass < 1e-17).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from bastion.errors import BastionError

_MANTISSA_BITS = 53
_CHUNK_VALUES = 1 << 20
_STREAM_LIMIT_BYTES = 1 << 37  # well inside ChaCha20's 2^32 blocks of 64 bytes


class NoiseSource(Protocol):
    """Draws i.i.d. N(0, std^2) noise."""

    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray: ...


def _check_std(std: float) -> None:
    if not (np.isfinite(std) and std >= 0):
        raise BastionError(f"noise standard deviation must be a non-negative number, got {std}")


class SecureGaussianNoise:
    """Gaussian noise from a ChaCha20 CSPRNG keyed by the OS (the production default)."""

    def __init__(self) -> None:
        self._rekey()

    def _rekey(self) -> None:
        # A fresh 256-bit key per stream; the zero nonce starts the block counter at 0.
        self._encryptor = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), None).encryptor()
        self._used = 0

    def _uniform_words(self, count: int) -> np.ndarray:
        if self._used + 8 * count > _STREAM_LIMIT_BYTES:
            self._rekey()
        self._used += 8 * count
        raw = self._encryptor.update(bytes(8 * count))
        return np.frombuffer(raw, dtype="<u8") >> np.uint64(64 - _MANTISSA_BITS)

    def standard_normal(self, count: int) -> np.ndarray:
        """``count`` independent N(0, 1) draws."""
        pairs = (count + 1) // 2
        out = np.empty(2 * pairs, dtype=np.float64)
        for start in range(0, pairs, _CHUNK_VALUES):
            size = min(_CHUNK_VALUES, pairs - start)
            words = self._uniform_words(2 * size).astype(np.float64)
            u1 = (words[:size] + 1.0) / 2.0**_MANTISSA_BITS  # (0, 1]: log is finite
            u2 = words[size:] / 2.0**_MANTISSA_BITS  # [0, 1)
            radius = np.sqrt(-2.0 * np.log(u1))
            angle = 2.0 * np.pi * u2
            out[2 * start : 2 * (start + size) : 2] = radius * np.cos(angle)
            out[2 * start + 1 : 2 * (start + size) : 2] = radius * np.sin(angle)
        return out[:count]

    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        _check_std(std)
        count = int(np.prod(shape, dtype=np.int64))
        return std * self.standard_normal(count).reshape(shape)


class SeededGaussianNoise:
    """Reproducible noise from numpy's PCG64: for tests and simulations, never production."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        _check_std(std)
        return self._rng.normal(0.0, std, size=shape) if std > 0 else np.zeros(shape)


def noise_source(seed: int | None) -> NoiseSource:
    """The CSPRNG-backed source, or a seeded reproducible one when a test passes ``seed``."""
    return SecureGaussianNoise() if seed is None else SeededGaussianNoise(seed)
