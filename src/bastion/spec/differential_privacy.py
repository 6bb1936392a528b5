"""``differential_privacy`` in ``plan.yaml``: accounting, the budget, and local DP-SGD.

Central DP is the ``dp_fedavg`` aggregation strategy; this section says how its rounds
are accounted (``accountant``, ``delta``), what total ``epsilon_budget`` the federation
may spend, and whether collaborators also train with DP-SGD (``local``). ``DPFedAvgArgs``
is the strategy's ``aggregation.args``, read by the strategy and by the privacy ledger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.spec.strategy_args import STRATEGY_ARGS_CONFIG

CENTRAL_STRATEGY = "dp_fedavg"
#: Relative slack when the plan states ``expected_clients`` and it is compared with q * N.
_TOLERANCE = 1e-9


class LocalDPSpec(BaseModel):
    """DP-SGD on every collaborator (Opacus): per-example clipping and Gaussian noise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noise_multiplier: float = Field(gt=0, description="noise std over max_grad_norm")
    max_grad_norm: float = Field(gt=0, description="per-example gradient clip norm")
    secure_mode: bool = Field(
        default=False, description="CSPRNG noise in Opacus (needs the torchcsprng package)"
    )
    epsilon_budget: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        strict=True,
        description=(
            "each site's own budget at differential_privacy.delta, over every round its "
            "records train in (kept in its local DP ledger across restarts): a site declines "
            "a train task whose DP-SGD steps would take it past the budget"
        ),
    )


class DifferentialPrivacySpec(BaseModel):
    """How privacy is accounted, the budget that stops training, and local DP-SGD."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accountant: Literal["rdp", "pld"] = Field(
        default="rdp", description="dp-accounting method: rdp (fast) or pld (tighter)"
    )
    delta: float = Field(default=1e-5, gt=0, lt=1, description="delta of the reported epsilon")
    epsilon_budget: float | None = Field(
        default=None,
        gt=0,
        description="central DP (dp_fedavg): stop before the round that would spend more",
    )
    local: LocalDPSpec | None = None


class DPFedAvgArgs(BaseModel):
    """``aggregation.args`` of ``dp_fedavg`` in ``plan.yaml``."""

    model_config = STRATEGY_ARGS_CONFIG

    noise_multiplier: float = Field(gt=0, description="z: noise std over clip norm")
    expected_clients: float | None = Field(
        default=None,
        gt=0,
        description="m = q x population, the fixed denominator; derived from participation",
    )
    clip_norm: float = Field(gt=0, description="S, or the initial S when adaptive")
    adaptive: bool = Field(
        default=False, description="track a quantile of update norms (Andrew et al.)"
    )
    target_quantile: float = Field(
        default=0.5, gt=0, lt=1, description="quantile the clip norm tracks"
    )
    clip_learning_rate: float = Field(
        default=0.2, gt=0, description="eta of the geometric clip update"
    )
    count_noise_std: float | None = Field(
        default=None,
        gt=0,
        description="sigma_b on the unclipped count; default expected_clients / 20",
    )
    server_learning_rate: float = Field(
        default=1.0, gt=0, description="step applied to the noisy mean"
    )
    seed: int | None = Field(default=None, description="reproducible noise, for simulations only")


def central_dp_problem(
    strategy: str,
    args: Mapping[str, Any],
    fraction: float,
    sampling: str,
    min_collaborators: int,
    roster_size: int,
    spec: DifferentialPrivacySpec | None,
) -> str | None:
    """Why the plan's DP settings do not fit together, or None when they do.

    The accountant assumes each collaborator joins a round independently with
    probability q = ``participation.fraction`` (Poisson sampling), and DP-FedAvg's noise
    is calibrated to the expected count m = q * N; a plan that samples otherwise, or
    states another m, would report an epsilon it does not have.
    """
    if strategy != CENTRAL_STRATEGY:
        if spec is not None and spec.epsilon_budget is not None:
            return (
                "differential_privacy.epsilon_budget: the budget is spent by central DP; set "
                f"aggregation.strategy: {CENTRAL_STRATEGY}, or for local DP-SGD give each "
                "site's budget as differential_privacy.local.epsilon_budget"
            )
        return None
    if fraction < 1 and sampling != "poisson":
        return (
            f"participation.sampling: {CENTRAL_STRATEGY} with fraction {fraction:g} < 1 needs "
            "'poisson' (each collaborator drawn independently), the sampling the privacy "
            "accountant assumes"
        )
    expected = fraction * roster_size
    stated = args.get("expected_clients") if isinstance(args, Mapping) else None
    if (
        isinstance(stated, int | float)
        and not isinstance(stated, bool)
        and not math.isclose(float(stated), expected, rel_tol=_TOLERANCE)
    ):
        return (
            f"aggregation.args.expected_clients: {stated:g} differs from participation.fraction "
            f"x roster = {expected:g}, the count the noise must be calibrated to; "
            "remove it (it is derived from the plan) or make them agree"
        )
    if sampling == "poisson" and min_collaborators > 1:
        return (
            "participation.min_collaborators: Poisson sampling draws each collaborator "
            "independently and cannot guarantee a minimum; leave it at 1"
        )
    return None


def central_strategy_args(args: Mapping[str, Any], fraction: float, roster_size: int) -> dict:
    """``aggregation.args`` of ``dp_fedavg`` with ``expected_clients`` filled in from the plan."""
    filled = dict(args)
    filled.setdefault("expected_clients", fraction * roster_size)
    return filled
