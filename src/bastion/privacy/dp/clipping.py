"""Per-update L2 clipping, fixed or adaptive.

Adaptive clipping follows Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping": each round the server privately estimates the fraction of updates
whose norm was at most the clip norm C from centred bits (sensitivity 1/2),
``b = clamp((sum_i (1[|d_i| <= C] - 1/2) + N(0, sigma_b^2)) / m + 1/2, 0, 1)``,
and moves C geometrically toward the target quantile gamma: ``C <- C * exp(-eta * (b - gamma))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bastion.errors import BastionError


def global_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken as one vector."""
    return math.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in tensors.values()))


def clip_by_global_norm(
    tensors: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``tensors`` by ``min(1, clip_norm / norm)``; returns the clipped copy and the norm."""
    norm = global_norm(tensors)
    factor = 1.0 if norm <= clip_norm else clip_norm / norm
    return {name: t.astype(np.float64) * factor for name, t in tensors.items()}, norm


@dataclass(frozen=True)
class FixedClipping:
    """A constant clip norm S."""

    clip_norm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise BastionError(f"clip_norm must be a positive number, got {self.clip_norm}")


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al. 2021: track the ``target_quantile`` of update norms.

    ``count_noise_std`` (sigma_b) is the noise on the count of unclipped updates; the
    paper suggests about ``expected_clients / 20``. It must exceed half the overall noise
    multiplier, since the count consumes part of the privacy budget.
    """

    initial_clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_clip_norm) and self.initial_clip_norm > 0):
            raise BastionError(
                f"initial_clip_norm must be a positive number, got {self.initial_clip_norm}"
            )
        if not 0 < self.target_quantile < 1:
            raise BastionError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise BastionError(f"clip learning_rate must be positive, got {self.learning_rate}")
        if not self.count_noise_std > 0:
            raise BastionError(f"count_noise_std must be positive, got {self.count_noise_std}")

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update noise that keeps the total at z."""
        remaining = noise_multiplier**-2 - (2.0 * self.count_noise_std) ** -2
        if remaining <= 0:
            raise BastionError(
                f"count_noise_std={self.count_noise_std} is too small for noise_multiplier="
                f"{noise_multiplier}: it must exceed {noise_multiplier / 2} (half the multiplier)"
            )
        return remaining**-0.5

    def next_clip_norm(self, clip_norm: float, noisy_unclipped_fraction: float) -> float:
        """The geometric update ``C * exp(-eta * (b - gamma))``."""
        step = -self.learning_rate * (noisy_unclipped_fraction - self.target_quantile)
        return clip_norm * math.exp(step)


Clipping = FixedClipping | AdaptiveClipping
