"""The plan's ``aggregation``, ``participation``, ``timeouts`` and ``best_model``: how
results become the model, who takes part in a round, when a round gives up, and which
model is kept as the best."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bastion.spec.strict import Strict


class AggregationSpec(Strict):
    strategy: str = "fedavg"
    args: dict[str, Any] = Field(default_factory=dict)
    # Bounded influence of one site: FedAvg trusts a site's example count up to its cap.
    max_example_count: int = Field(
        default=1_000_000,
        ge=1,
        le=10**12,
        description="the most examples one site's result may claim (FedAvg weights by it)",
    )
    site_example_counts: dict[str, int] = Field(
        default_factory=dict,
        description="per-site caps (e.g. the counts site agents declared), below the default",
    )
    max_update_norm: float | None = Field(
        default=None, gt=0, description="L2 bound on (update - global model); none by default"
    )
    max_update_norm_ratio: float | None = Field(
        default=1000.0,
        gt=0,
        description="L2 bound on (update - global) as a multiple of max(|global|, 1)",
    )
    norm_bound: Literal["reject", "clip"] = "reject"
    metric_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"accuracy": (0.0, 1.0)},
        description="allowed [low, high] per metric; any metric's magnitude is at most 1e12",
    )


class ParticipationSpec(Strict):
    """Per-round client sampling (fraction C of the roster, seeded for reproducibility)."""

    fraction: float = Field(default=1.0, gt=0, le=1)
    min_collaborators: int = Field(default=1, ge=1)
    seed: int = 0
    sampling: Literal["fixed", "poisson"] = Field(
        default="fixed",
        description="fixed: ceil(fraction x roster) from the seed; poisson: each independently "
        "with probability fraction, from the OS CSPRNG (what DP accounting assumes)",
    )
    max_empty_rounds: int | None = Field(
        default=None,
        ge=0,
        description="consecutive rounds that assign nobody (an assigner returning nobody, a "
        "Poisson sample of nobody) before training ends and the final evaluation runs; each is "
        "skipped with the model unchanged. Unset: skip them for as long as rounds remain",
    )
    open_roster: bool = Field(
        default=False,
        description="federation service only: a site of the roster that registers after the job "
        "started joins it and is assigned from the next round",
    )


class TimeoutSpec(Strict):
    round_seconds: float = Field(default=900.0, gt=0)
    min_results: int = Field(default=1, ge=1, description="train results needed to close a round")
    poll_seconds: float = Field(default=0.5, gt=0)
    reconnect_give_up_seconds: float = Field(default=600.0, gt=0)
    lost_seconds: float = Field(
        default=120.0,
        gt=0,
        description="a site silent this long (no poll, no heartbeat) is reported lost",
    )


class BestModelSpec(Strict):
    task: str | None = Field(default=None, description="validate task; default: first global one")
    metric: str = "accuracy"
    mode: Literal["max", "min"] = "max"
