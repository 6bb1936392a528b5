"""FedAvg: the example-weighted average of local models.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": w_{t+1} = sum_k (n_k / n) w^k_{t+1}. Results are folded in as
they arrive into one running sum, so memory is O(model); the aggregator's streaming
intake (``bastion.aggregator.streaming``) folds them chunk by chunk through ``fold``.

The accumulator's precision is a documented choice (``accumulator``):

- ``"float64"`` (the default for models up to ``FLOAT64_ACCUMULATOR_MAX_BYTES``): one
  float64 running sum of n_k w_k per tensor (2x a float32 model), as exact as float64 is;
- ``"float32-delta"`` (the default above it): float32 tensors accumulate the weighted
  *difference from the round's global model*, D = sum_k n_k (w_k - g), in float32 (1x the
  model), and ``finalize`` writes g + D / n into D itself, so the aggregator holds the
  model, one accumulator and nothing else. Centring on g is what makes float32 enough:
  each addition rounds relative to |D| ~ |w_k - g|, small next to |g|, so the summation
  error stays below the final rounding of g + D/n to float32. Other dtypes keep float64.

``begin_round`` zeroes and reuses the last round's float64 accumulator, or the last
round's model (a float32-delta accumulator of the round before), when nothing else holds
it (``bastion.buffers``): no buffer lives longer than it did, and a resident one is
rewritten instead of a fresh one being faulted in.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from bastion.algorithms.base import Strategy, add_scaled, cast_like
from bastion.buffers import RetiredBuffers
from bastion.tensors import Scratch, Weights, blocks, total_bytes

#: Above this model size float32 tensors accumulate float32 deltas (see the module doc).
FLOAT64_ACCUMULATOR_MAX_BYTES = 32 * 1024 * 1024

Accumulator = Literal["auto", "float64", "float32-delta"]


def accumulator_kind(global_weights: Weights, choice: Accumulator = "auto") -> str:
    """``"float64"`` or ``"float32-delta"``: ``choice``, or by the model's size for ``"auto"``."""
    if choice != "auto":
        return choice
    if total_bytes(global_weights) <= FLOAT64_ACCUMULATOR_MAX_BYTES:
        return "float64"
    return "float32-delta"


class FedAvg(Strategy):
    """Example-weighted federated averaging.

    ``accumulate`` is ``fold`` of every tensor, then ``count_folded``: the streaming
    intake makes the same calls chunk by chunk, so both paths give the same sums.
    """

    name = "fedavg"

    def __init__(self, accumulator: Accumulator = "auto") -> None:
        self.accumulator: Accumulator = accumulator
        self._global: Weights = {}
        self._sum: dict[str, np.ndarray] = {}
        #: tensors whose ``_sum`` holds float32 sum n (w - g) rather than float64 sum n w
        self._delta: set[str] = set()
        self._total_weight = 0.0
        self._count = 0
        self._averaged = False
        #: folds are serialized (see ``fold``), so one block of temporaries serves them all
        self._scratch = Scratch()
        self._buffers = RetiredBuffers()

    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        # Last round's accumulator and last round's model (a float32-delta accumulator of
        # the round before): this round's accumulator if nothing else holds them, else let go.
        self._buffers.hold([*self._sum.values(), *self._global.values()])
        self._sum = {}
        self._global = global_weights
        delta = accumulator_kind(global_weights, self.accumulator) == "float32-delta"
        self._delta = {
            n for n, a in global_weights.items() if delta and a.dtype == np.dtype(np.float32)
        }
        self._sum = {
            n: self._buffers.zeros(
                a.shape, np.dtype(np.float32 if n in self._delta else np.float64)
            )
            for n, a in global_weights.items()
        }
        self._buffers.clear()  # nothing outlives the call: no memory held past the engine's
        self._total_weight = 0.0
        self._count = 0
        self._averaged = False

    def accumulate(self, collaborator: str, update: Weights, weight: float) -> None:
        if self._averaged:
            raise RuntimeError("accumulate() after finalize(); call begin_round() first")
        if not weight > 0:
            raise ValueError(f"weight of {collaborator!r} must be positive, got {weight}")
        for name in self._sum:
            self.fold(name, 0, update[name].reshape(-1), weight)
        self.count_folded(weight)

    # ---------------------------------------------------------------- streaming folds

    def fold(self, name: str, start: int, values: np.ndarray, weight: float) -> None:
        """Add ``weight`` x the flat elements ``values`` of tensor ``name`` from ``start``.

        Folding the same values with ``-weight`` takes them back out (a refused update).
        Not thread-safe: callers that fold from several threads serialize.
        """
        if self._averaged:
            raise RuntimeError("fold() after finalize(); call begin_round() first")
        total = self._sum[name].reshape(-1)[start : start + values.size]
        if name not in self._delta:
            add_scaled(total, values, weight, self._scratch)
            return
        base = self._global[name].reshape(-1)[start : start + values.size]
        scale = np.float32(weight)
        for part in blocks(total):
            step = self._scratch.take(np.float32, part.stop - part.start)
            np.subtract(values[part], base[part], out=step)
            step *= scale
            total[part] += step

    def count_folded(self, weight: float) -> None:
        """One result's folds are complete: it counts, with ``weight``."""
        if self._averaged:
            raise RuntimeError("accumulate() after finalize(); call begin_round() first")
        self._total_weight += weight
        self._count += 1

    # ---------------------------------------------------------------- secure sums

    def accumulate_secure_sum(
        self, delta_sum: Weights, total_weight: float, count: int, unclipped: float
    ) -> None:
        """Fold in a secure aggregation sum: ``sum_i w_i (x_i - global)`` and ``sum_i w_i``."""
        if self._averaged:
            raise RuntimeError("accumulate_secure_sum() after finalize(); call begin_round() first")
        if not total_weight > 0 or count < 1:
            raise ValueError(f"a secure sum needs a positive weight, got {total_weight}")
        for name, total in self._sum.items():
            if name not in self._delta:
                add_scaled(total, self._global[name], total_weight, self._scratch)
            total += delta_sum[name].astype(total.dtype, copy=False)
        self._total_weight += total_weight
        self._count += count

    def secure_clip_norm(self) -> float:
        """FedAvg does not clip: 0."""
        return 0.0

    @property
    def accepted(self) -> int:
        return self._count

    def average(self) -> dict[str, np.ndarray]:
        """The float64 weighted average; subclasses (FedAvgM, FedOpt) start from it."""
        if self._count == 0:
            raise RuntimeError("finalize() called before any result was accumulated")
        if not self._averaged:  # divide in place: no second model-sized float64 buffer
            for name, total in self._sum.items():
                if name in self._delta:
                    base = self._global[name].astype(np.float64)
                    base += total / self._total_weight
                    self._sum[name] = base
                else:
                    total /= self._total_weight
            self._delta = set()
            self._averaged = True
        return self._sum

    def finalize(self) -> Weights:
        if self._delta and not self._averaged:
            return self._finalize_in_place()
        return cast_like(self.average(), self._global)

    def _finalize_in_place(self) -> Weights:
        """g + D / n written into D itself: the new model costs no allocation."""
        if self._count == 0:
            raise RuntimeError("finalize() called before any result was accumulated")
        inverse = np.float32(1.0 / self._total_weight)
        delta_names, self._delta = self._delta, set()
        out: Weights = {}
        for name, reference in self._global.items():
            total = self._sum[name]
            if name in delta_names:
                flat, base = total.reshape(-1), reference.reshape(-1)
                for part in blocks(flat):
                    flat[part] *= inverse
                    flat[part] += base[part]
                out[name] = total
            else:
                total /= self._total_weight
                out[name] = cast_like({name: total}, {name: reference})[name]
        self._sum = {}
        self._averaged = True
        return out
