"""How much one site can move the federation: its example count, its update, its metrics.

FedAvg weights each update by the site's reported example count, so a site that claims
10^12 examples would be the federation. The plan caps every count (``aggregation.
max_example_count``, or a site's own ``site_example_counts``), bounds the L2 norm of an
update's difference from the global model (reject or clip), and bounds every metric
(``metric_ranges``; any metric within +-1e12), so one site can neither make the global
model nor a round's metric non-finite.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bastion.errors import UpdateRejected
from bastion.plan import Plan
from bastion.tensors import Scratch, Weights, squared_distance64

log = logging.getLogger("bastion.aggregator")

MAX_METRIC_MAGNITUDE = 1e12


@dataclass(frozen=True)
class InfluenceBounds:
    """The plan's bounds on one site's result."""

    max_example_count: int = 1_000_000
    site_example_counts: Mapping[str, int] = field(default_factory=dict)
    max_update_norm: float | None = None
    max_update_norm_ratio: float | None = 1000.0
    norm_bound: str = "reject"
    metric_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, plan: Plan) -> InfluenceBounds:
        spec = plan.aggregation
        return cls(
            spec.max_example_count,
            dict(spec.site_example_counts),
            spec.max_update_norm,
            spec.max_update_norm_ratio,
            spec.norm_bound,
            dict(spec.metric_ranges),
        )

    def example_cap(self, collaborator: str) -> int:
        return min(self.max_example_count, self.site_example_counts.get(collaborator, 10**12))

    def check_count(self, collaborator: str, example_count: int) -> None:
        cap = self.example_cap(collaborator)
        if example_count > cap:
            raise UpdateRejected(
                f"example count {example_count} exceeds the plan's cap of {cap} for "
                f"{collaborator} (aggregation.max_example_count / site_example_counts)"
            )

    def check_metrics(self, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            low, high = self.metric_ranges.get(name, (-MAX_METRIC_MAGNITUDE, MAX_METRIC_MAGNITUDE))
            if not low <= value <= high:
                raise UpdateRejected(
                    f"metric {name!r} = {value:g} is outside [{low:g}, {high:g}] "
                    "(aggregation.metric_ranges)"
                )

    def norm_limit(self, model: Weights, model_norm: float | None = None) -> float | None:
        """The largest distance from ``model`` an update may have; ``model_norm``: the
        model's L2 norm where the caller knows it."""
        limits = []
        if self.max_update_norm is not None:
            limits.append(self.max_update_norm)
        if self.max_update_norm_ratio is not None:
            norm = l2_norm(model) if model_norm is None else model_norm
            limits.append(self.max_update_norm_ratio * max(norm, 1.0))
        return min(limits) if limits else None

    def bound_update(self, collaborator: str, update: Weights, model: Weights) -> Weights:
        """``update`` if its distance from ``model`` is within the bound; else rejected, or
        clipped onto the bound (logged) with ``norm_bound: clip``."""
        limit = self.norm_limit(model)
        if limit is None:
            return update
        scale = self.clip_scale(collaborator, l2_distance(update, model), limit)
        if scale is None:
            return update
        return {
            name: clipped(array, model[name], scale) if array.dtype.kind == "f" else array
            for name, array in update.items()
        }

    def clip_scale(self, collaborator: str, distance: float, limit: float) -> float | None:
        """None if ``distance`` is within ``limit``; else the factor that clips the update
        onto it (``norm_bound: clip``, logged), or ``UpdateRejected``. The whole-update and
        the streaming intake both decide here."""
        if distance <= limit:
            return None
        if self.norm_bound == "reject" or not math.isfinite(distance):
            raise UpdateRejected(
                f"update is {distance:.3g} from the global model; the bound is {limit:.3g} "
                "(aggregation.max_update_norm / max_update_norm_ratio)"
            )
        log.warning(
            "clipped %s's update from L2 distance %.3g to the bound %.3g",
            collaborator,
            distance,
            limit,
        )
        return limit / distance


def clipped(values: np.ndarray, base: np.ndarray, scale: float) -> np.ndarray:
    """``base + (values - base) * scale`` in float64, in ``values``' dtype (a clipped update)."""
    return (base + (values.astype(np.float64) - base) * scale).astype(values.dtype)


def l2_norm(weights: Weights, scratch: Scratch | None = None) -> float:
    """||weights|| in float64, block by block through ``scratch`` (a fresh one without it:
    its 4 MiB block is then mapped and faulted in again, about 2.5 ms a pass)."""
    scratch = Scratch() if scratch is None else scratch
    total = sum(
        squared_distance64(array.reshape(-1), None, scratch)
        for array in weights.values()
        if array.dtype.kind == "f"
    )
    return math.sqrt(total)


def l2_distance(update: Weights, model: Weights) -> float:
    """||update - model|| in float64, block by block (O(block) temporary memory)."""
    scratch = Scratch()
    total = sum(
        squared_distance64(array.reshape(-1), model[name].reshape(-1), scratch)
        for name, array in update.items()
        if array.dtype.kind == "f"
    )
    return math.sqrt(total)


def robust_mean(pairs: list[tuple[float, int]]) -> float:
    """The example-weighted mean; the median if that would not be finite."""
    total = sum(n for _, n in pairs)
    if total > 0:
        value = math.fsum(v * (n / total) for v, n in pairs)
        if math.isfinite(value):
            return value
    values = sorted(v for v, _ in pairs)
    return float(np.median(values)) if values else 0.0
