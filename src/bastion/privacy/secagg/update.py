"""One collaborator's training result as a secure aggregation vector, and the round's sum back.

Layout of the ring vector (every value fixed-point quantized, see ``quantize``)::

    [ (w / M) * delta  for every model coordinate, in tensor order ]   clip [-C, C]
    [ w / M ]                                                           the weight
    [ 1 if ||delta|| <= S else 0 ]                                      central DP only

``delta`` is the local model minus the round's global model, ``w`` the weight (the
example count, or 1 each under central DP) and ``M`` the plan's public ``max_weight``.
Weights are applied before masking, so the aggregator unmasks only ``sum w_i delta_i``
and ``sum w_i``: weighted FedAvg without learning any one site's example count. The
last slot lets adaptive clipping (Andrew et al. 2021) count unclipped updates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bastion.privacy.errors import SecAggError
from bastion.privacy.secagg.encoding import WeightedUpdateEncoder
from bastion.privacy.secagg.quantize import FixedPointQuantizer
from bastion.tensors import Weights

log = logging.getLogger("bastion.privacy")

Weighting = Literal["examples", "unit"]


@dataclass(frozen=True)
class SecureSum:
    """What the aggregator learns from one session: sums over its contributors only."""

    delta_sum: Weights
    total_weight: float
    contributors: int
    unclipped: float
    error_bound: float
    """Largest error of any coordinate of ``delta_sum`` from fixed-point rounding."""


class UpdateCodec:
    """Turns ``(delta, weight)`` into a ring vector and a ring sum into a ``SecureSum``."""

    def __init__(
        self,
        like: Mapping[str, np.ndarray],
        quantizer: FixedPointQuantizer,
        weighting: Weighting,
        max_weight: float,
    ) -> None:
        self.weighting = weighting
        self.max_weight = 1.0 if weighting == "unit" else float(max_weight)
        self.quantizer = quantizer
        self._encoder = WeightedUpdateEncoder(like, quantizer, self.max_weight)
        self._flag = FixedPointQuantizer(1.0, quantizer.bits, quantizer.modulus_bits)

    @property
    def values(self) -> int:
        """Model coordinates carried (the vector has one or two more words)."""
        return self._encoder.vector_length - 1

    @property
    def vector_length(self) -> int:
        return self._encoder.vector_length + (1 if self.weighting == "unit" else 0)

    def norm_slack(self) -> float:
        """How much fixed-point rounding can add to a delta's L2 norm (sqrt(L) * step / 2)."""
        return float(np.sqrt(self.values)) / (2.0 * self.quantizer.scale) * self.max_weight

    def encode(
        self, delta: Mapping[str, np.ndarray], weight: float, within_clip: bool = True
    ) -> tuple[np.ndarray, int]:
        """The ring vector, and how many coordinates the range ``[-C, C]`` clipped."""
        if self.weighting == "unit":
            weight = 1.0
        if not weight > 0:
            raise SecAggError(f"a training result needs a positive weight, got {weight}")
        if weight > self.max_weight:
            log.warning(
                "example count %g exceeds secure_aggregation.max_weight=%g; counting it as %g",
                weight,
                self.max_weight,
                self.max_weight,
            )
            weight = self.max_weight
        vector, clipped = self._encoder.encode_counting(delta, weight)
        if self.weighting == "unit":
            flag = self._flag.quantize(np.array([1.0 if within_clip else 0.0]))
            vector = np.concatenate([vector, flag])
        return vector, clipped

    def decode(self, total: np.ndarray, count: int) -> SecureSum:
        """Sums over ``count`` contributors from their ring sum."""
        if total.shape != (self.vector_length,):
            raise SecAggError(f"expected a sum of length {self.vector_length}, got {total.shape}")
        unclipped = 0.0
        if self.weighting == "unit":
            unclipped = float(self._flag.dequantize_sum(total[-1:], count)[0])
            total = total[:-1]
        weighted = self._encoder.decode(total, count)
        total_weight = weighted.total_weight
        weight_error = self._flag.error_bound(count) * self.max_weight
        if weight_error < 0.5:  # example counts are integers: rounding makes the sum exact
            total_weight = float(round(total_weight))
        return SecureSum(
            delta_sum=weighted.weighted_sum,
            total_weight=total_weight,
            contributors=count,
            unclipped=round(unclipped),
            error_bound=self.quantizer.error_bound(count) * self.max_weight,
        )
