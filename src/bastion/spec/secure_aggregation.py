"""``secure_aggregation`` in ``plan.yaml``: the aggregator learns only the sum of the updates.

```yaml
secure_aggregation:
  threshold_fraction: 0.5   # t = floor(0.5 x holders) + 1 shares rebuild a secret
  neighbours: null          # SecAgg+ (Bell et al. 2020): an even k; null = every pair
  clip: 1.0                 # fixed-point range of (weight / max_weight) x (local - global)
  max_weight: 1000000       # public bound on a collaborator's example count
```

Only pydantic and the standard library are imported here, so ``bastion.plan`` can use
it. Which aggregation strategies compose with it is decided by name
(``secure_aggregation_problem``): the aggregator sees one sum per round, so only rules
that need nothing but the (weighted) sum of the updates can run on top of it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Strategies that need only the example-weighted sum of the updates.
WEIGHTED_SUM_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
#: Central DP: clients clip their own deltas, each counts once, the server adds noise.
UNIT_SUM_STRATEGIES = ("dp_fedavg",)
_REFUSED = {
    "median": "the coordinate-wise median needs every update",
    "trimmed_mean": "a trimmed mean needs every update to sort",
    "krum": "Krum scores every update against the others",
    "fedcurv": "FedCurv also sums Fisher terms unweighted next to the weighted average, "
    "which one masked sum does not carry yet",
}


class SecureAggregationSpec(BaseModel):
    """Secure aggregation (Bonawitz et al. 2017; SecAgg+ graph of Bell et al. 2020)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    threshold_fraction: float = Field(
        default=0.5,
        ge=0.5,
        lt=1,
        description="t = floor(fraction x holders) + 1; 0.5 tolerates the most dropouts",
    )
    neighbours: int | None = Field(
        default=None,
        ge=2,
        description="SecAgg+: even number of peers each client masks with; null = all",
    )
    min_clients: int = Field(
        default=3, ge=2, description="collaborators refuse a session with fewer participants"
    )
    clip: float = Field(
        default=1.0, gt=0, description="each weighted delta coordinate is clipped to [-clip, clip]"
    )
    bits: int | None = Field(
        default=None,
        ge=1,
        le=52,
        description="fixed-point bits per value; default: as many as the ring holds for n",
    )
    modulus_bits: Literal[32, 64] = Field(default=32, description="sums are taken modulo 2^k")
    max_weight: float = Field(
        default=1_000_000.0,
        gt=0,
        description="public bound on an example count; larger counts are capped to it",
    )
    stage_seconds: float = Field(
        default=60.0, gt=0, description="how long each protocol stage after training waits"
    )

    @model_validator(mode="after")
    def _even_neighbours(self) -> SecureAggregationSpec:
        if self.neighbours is not None and self.neighbours % 2:
            raise ValueError(
                f"neighbours must be even (a ring joined k/2 steps each way), got {self.neighbours}"
            )
        return self


def weighting_for(strategy: str) -> Literal["examples", "unit"]:
    """How a client weights its update: by example count, or once each (central DP)."""
    return "unit" if strategy in UNIT_SUM_STRATEGIES else "examples"


def secure_aggregation_problem(
    strategy: str,
    spec: SecureAggregationSpec | None,
    roster_size: int,
    compression: bool = False,
    train_tasks: int | None = None,
) -> str | None:
    """Why the plan's secure aggregation cannot run, or None when it can.

    ``train_tasks`` is how many train tasks every collaborator runs per round (None when
    task groups or an assigner decide; the aggregator then checks each round).
    """
    if spec is None or not spec.enabled:
        return None
    if train_tasks is not None and train_tasks > 1:
        return (
            f"tasks: {train_tasks} train tasks per round; secure aggregation sums one update "
            "per collaborator per round, so keep one train task"
        )
    if compression and strategy in UNIT_SUM_STRATEGIES:
        return (
            f"compression: with secure_aggregation and {strategy!r}, clients clip the update "
            "they send, and decompressing the sum could exceed the clip norm the noise is "
            "calibrated to; drop compression or secure aggregation for central DP"
        )
    if strategy in _REFUSED:
        usable = ", ".join(WEIGHTED_SUM_STRATEGIES + UNIT_SUM_STRATEGIES)
        return (
            f"aggregation.strategy: {strategy!r} cannot run with secure_aggregation: "
            f"{_REFUSED[strategy]}, and the aggregator only ever sees the sum; use one of "
            f"{usable}, or turn secure_aggregation off"
        )
    if strategy not in WEIGHTED_SUM_STRATEGIES + UNIT_SUM_STRATEGIES:
        return f"aggregation.strategy: {strategy!r} is not known to compose with secure_aggregation"
    if spec.min_clients > roster_size:
        return (
            f"secure_aggregation.min_clients ({spec.min_clients}) exceeds the roster size "
            f"({roster_size}): no round could ever be aggregated"
        )
    return None
