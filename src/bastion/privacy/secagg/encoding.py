"""Weighted updates to and from secure aggregation vectors, so weighted FedAvg composes.

Each client sends ``w * x`` and ``w`` itself, both masked: the server learns only
``sum w_i x_i`` and ``sum w_i``, never a client's example count. Weights are divided by a
public ``max_weight`` (from the plan) so ``w / max_weight`` lies in ``(0, 1]`` and gets
its own quantizer with clip 1; values use the caller's clip range ``C``, which must cover
``|w x| / max_weight`` — send deltas (local minus global) rather than whole models, so a
small ``C`` keeps the quantization step ``2C / (2^b - 1)`` small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bastion.privacy.errors import SecAggError
from bastion.privacy.secagg.quantize import FixedPointQuantizer
from bastion.tensors import Weights, blocks


@dataclass(frozen=True)
class WeightedSum:
    """What the server learns: the weighted sum of updates and the sum of weights."""

    weighted_sum: Weights
    total_weight: float

    def average(self) -> Weights:
        if not self.total_weight > 0:
            raise SecAggError("the weights of the secure aggregation survivors sum to zero")
        return {name: total / self.total_weight for name, total in self.weighted_sum.items()}


class WeightedUpdateEncoder:
    """Flattens ``weight * update`` and the weight into one ring vector, in tensor order."""

    def __init__(
        self, like: Mapping[str, np.ndarray], quantizer: FixedPointQuantizer, max_weight: float
    ) -> None:
        if not (math.isfinite(max_weight) and max_weight > 0):
            raise SecAggError(f"max_weight must be a positive number, got {max_weight}")
        self._shapes = {name: tuple(array.shape) for name, array in like.items()}
        self._sizes = {
            name: int(np.prod(shape, dtype=np.int64)) for name, shape in self._shapes.items()
        }
        self.quantizer = quantizer
        self.weight_quantizer = FixedPointQuantizer(1.0, quantizer.bits, quantizer.modulus_bits)
        self.max_weight = float(max_weight)

    @property
    def vector_length(self) -> int:
        """Ring words per client: every tensor element plus one for the weight."""
        return sum(self._sizes.values()) + 1

    def encode(self, update: Mapping[str, np.ndarray], weight: float) -> np.ndarray:
        """The client's ring vector: quantized ``(weight / max_weight) * update``; weight last."""
        return self.encode_counting(update, weight)[0]

    def encode_counting(
        self, update: Mapping[str, np.ndarray], weight: float
    ) -> tuple[np.ndarray, int]:
        """``encode``, and how many values the clip range ``[-C, C]`` cut short.

        Works block by block into the output vector, so its temporaries are a few MiB
        whatever the model's size.
        """
        if not 0 < weight <= self.max_weight:
            raise SecAggError(
                f"weight {weight} must be positive and at most max_weight={self.max_weight}"
            )
        if set(update) != set(self._shapes):
            raise SecAggError("the update's tensor names differ from the model's")
        scaled = weight / self.max_weight
        vector = np.empty(self.vector_length, dtype=self.quantizer.dtype)
        offset, clipped, clip = 0, 0, self.quantizer.clip
        for name, shape in self._shapes.items():
            array = np.asarray(update[name])
            if array.shape != shape:
                raise SecAggError(f"tensor {name!r} has shape {array.shape}, expected {shape}")
            flat = array.reshape(-1)
            for part in blocks(flat):
                values = flat[part].astype(np.float64) * scaled
                clipped += int(np.count_nonzero((values > clip) | (values < -clip)))
                start = offset + part.start
                self.quantizer.quantize(values, out=vector[start : offset + part.stop])
            offset += flat.size
        self.weight_quantizer.quantize(np.array([scaled]), out=vector[-1:])
        return vector, clipped

    def decode(self, total: np.ndarray, count: int) -> WeightedSum:
        """``sum w_i x_i`` (float64) and ``sum w_i`` from the ring sum of ``count`` vectors."""
        if total.shape != (self.vector_length,):
            raise SecAggError(f"expected a sum of length {self.vector_length}, got {total.shape}")
        values = self.quantizer.dequantize_sum(total[:-1], count)
        values *= self.max_weight
        weight = float(self.weight_quantizer.dequantize_sum(total[-1:], count)[0]) * self.max_weight
        out: Weights = {}
        offset = 0
        for name, shape in self._shapes.items():
            size = self._sizes[name]
            out[name] = values[offset : offset + size].reshape(shape)
            offset += size
        return WeightedSum(out, weight)
