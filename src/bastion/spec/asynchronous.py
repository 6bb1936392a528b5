"""``asynchronous`` in ``plan.yaml``: buffered asynchronous aggregation (FedBuff).

```yaml
asynchronous:
  buffer_size: 3            # K: updates buffered before the server step publishes a version
  max_staleness: 10         # an update that started more versions back is refused
  max_concurrency: null     # at most this many sites train at once (null: every site)
  staleness:
    function: polynomial    # constant | polynomial | hinge (Nguyen et al. 2022, after Xie et al.)
    a: 0.5                  # polynomial: s(τ) = (1 + τ)^-a; hinge: the slope a
    b: 4                    # hinge: s(τ) = 1 for τ <= b, else 1 / (a (τ - b) + 1)
  server_learning_rate: 1.0 # η_g in w_{t+1} = w_t - η_g Δ̄ (keep 1.0 with FedAdam/FedYogi)
```

Only pydantic and the standard library are imported here, so ``bastion.plan`` can use
it. ``asynchronous_problem`` says which other plan sections it cannot run with, and why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Server steps that need only the buffered updates' average (FedAvg-style or FedOpt).
BUFFERED_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


class StalenessSpec(BaseModel):
    """The staleness weight s(τ) of an update that started τ versions before the current one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: Literal["constant", "polynomial", "hinge"] = Field(
        default="polynomial",
        description="constant: s = 1; polynomial: s = (1 + τ)^-a; "
        "hinge: s = 1 for τ <= b, else 1 / (a (τ - b) + 1)",
    )
    a: float = Field(default=0.5, gt=0, description="polynomial exponent, or the hinge's slope")
    b: int = Field(default=4, ge=0, description="hinge: the staleness up to which s = 1")


class AsynchronousSpec(BaseModel):
    """FedBuff (Nguyen et al. 2022): sites train whenever free on the latest model they
    hold; every ``buffer_size`` updates make one server step and a new model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    buffer_size: int = Field(
        ge=1, description="K: updates buffered before a server step publishes a new version"
    )
    max_staleness: int = Field(
        default=10,
        ge=0,
        description="an update whose starting version is more than this many versions old "
        "is refused (its site gets fresh work)",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="the paper's concurrency: at most this many sites train at once (each "
        "site holds one task at a time); unset: every site",
    )
    staleness: StalenessSpec = Field(default_factory=StalenessSpec)
    server_learning_rate: float = Field(
        default=1.0, gt=0, description="η_g: w_{t+1} = w_t - η_g Δ̄ before the strategy's step"
    )


def asynchronous_problem(
    spec: AsynchronousSpec | None,
    strategy: str,
    roster_size: int,
    *,
    secure_aggregation: bool,
    central_dp: bool,
    compression: bool,
) -> str | None:
    """Why the plan's ``asynchronous`` section cannot run with the rest of it, or None."""
    if spec is None or not spec.enabled:
        return None
    if secure_aggregation:
        return (
            "asynchronous: secure aggregation masks one synchronized cohort's updates together "
            "in one round, and buffered asynchronous aggregation folds each update in as it "
            "arrives from whichever site is done; turn one of them off (secure_aggregation."
            "enabled: false, or remove the asynchronous section)"
        )
    if central_dp:
        return (
            "asynchronous: central DP's accountant charges each round as one cohort sampled "
            "with rate q = participation.fraction; which updates land in an asynchronous "
            "buffer depends on the sites' speed, not on a sampling rate, so no epsilon could "
            "be reported; use local DP (differential_privacy.local) or synchronous rounds"
        )
    if compression:
        return (
            "asynchronous: compressed updates are deltas against the current round's model, "
            "and a buffered update may have started from an older version; remove the "
            "compression section to run asynchronously"
        )
    if strategy not in BUFFERED_STRATEGIES:
        return (
            f"asynchronous: aggregation.strategy {strategy!r} cannot be the server step of "
            f"buffered updates; choose one of {', '.join(BUFFERED_STRATEGIES)}"
        )
    if spec.buffer_size > roster_size:
        return (
            f"asynchronous.buffer_size ({spec.buffer_size}) exceeds the roster size "
            f"({roster_size}): each site has one task in flight at a time, so the buffer "
            "could never fill; use at most the number of collaborators"
        )
    return None
