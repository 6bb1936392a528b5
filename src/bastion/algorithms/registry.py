"""Strategy names as written in ``plan.yaml`` and their validated construction.

``create_strategy("fedadam", {"eta": 0.01})`` checks the arguments against the
strategy's pydantic model and raises a ``PlanError`` naming ``aggregation.args.<key>``
and what is allowed, so a bad plan fails when it is loaded, not rounds later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from bastion.algorithms.args import NoArgs
from bastion.algorithms.base import Strategy
from bastion.algorithms.dp_fedavg import DPFedAvg
from bastion.algorithms.fedadagrad import FedAdagrad, FedAdagradArgs
from bastion.algorithms.fedadam import FedAdam, FedAdamArgs
from bastion.algorithms.fedavg import FedAvg
from bastion.algorithms.fedavgm import FedAvgM, FedAvgMArgs
from bastion.algorithms.fedcurv import FedCurv
from bastion.algorithms.fedyogi import FedYogi, FedYogiArgs
from bastion.algorithms.krum import Krum, KrumArgs
from bastion.algorithms.median import Median, MedianArgs
from bastion.algorithms.trimmed_mean import TrimmedMean, TrimmedMeanArgs
from bastion.errors import PlanError
from bastion.plan import Plan
from bastion.spec.differential_privacy import (
    CENTRAL_STRATEGY,
    DPFedAvgArgs,
    central_strategy_args,
)


@dataclass(frozen=True)
class _Entry:
    strategy: type[Strategy]
    args: type[BaseModel]
    build: Callable[[Any], Strategy]


_ENTRIES: dict[str, _Entry] = {
    "fedavg": _Entry(FedAvg, NoArgs, lambda _: FedAvg()),
    "fedavgm": _Entry(FedAvgM, FedAvgMArgs, FedAvgM),
    "fedadam": _Entry(FedAdam, FedAdamArgs, FedAdam),
    "fedyogi": _Entry(FedYogi, FedYogiArgs, FedYogi),
    "fedadagrad": _Entry(FedAdagrad, FedAdagradArgs, FedAdagrad),
    "median": _Entry(Median, MedianArgs, Median),
    "trimmed_mean": _Entry(TrimmedMean, TrimmedMeanArgs, TrimmedMean),
    "krum": _Entry(Krum, KrumArgs, Krum),
    "fedcurv": _Entry(FedCurv, NoArgs, lambda _: FedCurv()),
    "dp_fedavg": _Entry(DPFedAvg, DPFedAvgArgs, DPFedAvg.from_args),
}

#: Strategy classes by their ``aggregation.strategy`` name.
STRATEGIES: dict[str, type[Strategy]] = {name: e.strategy for name, e in _ENTRIES.items()}

#: The pydantic model of each strategy's ``aggregation.args`` (for docs and plan checks).
STRATEGY_ARGS: dict[str, type[BaseModel]] = {name: e.args for name, e in _ENTRIES.items()}


def create_strategy(name: str, args: Mapping[str, Any] | None = None) -> Strategy:
    """Build strategy ``name`` from its ``aggregation.args``; a ``PlanError`` if either is wrong."""
    entry = _ENTRIES.get(name)
    if entry is None:
        raise PlanError(
            f"aggregation.strategy: unknown strategy {name!r}; choose one of {', '.join(_ENTRIES)}"
        )
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise PlanError(
            f"aggregation.args: expected a mapping of argument names to values, "
            f"got {type(args).__name__}"
        )
    try:
        validated = entry.args.model_validate(dict(args))
    except ValidationError as exc:
        raise PlanError(_describe(name, entry.args, exc)) from None
    return entry.build(validated)


def create_plan_strategy(plan: Plan) -> Strategy:
    """The plan's strategy; DP-FedAvg's expected client count comes from its participation."""
    args = plan.aggregation.args
    if plan.aggregation.strategy == CENTRAL_STRATEGY and isinstance(args, Mapping):
        args = central_strategy_args(
            args, plan.participation.fraction, len(plan.collaborator_names())
        )
    return create_strategy(plan.aggregation.strategy, args)


def _describe(strategy: str, model: type[BaseModel], exc: ValidationError) -> str:
    """One line per problem, each naming ``aggregation.args.<key>`` and what is allowed."""
    allowed = ", ".join(model.model_fields) or "none"
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        where = f"aggregation.args.{key}"
        if error["type"] == "extra_forbidden":
            lines.append(
                f"{where}: strategy {strategy!r} has no argument {key!r}; allowed: {allowed}"
            )
            continue
        field = model.model_fields.get(str(error["loc"][0])) if error["loc"] else None
        hint = f" ({field.description})" if field is not None and field.description else ""
        got = "" if error["type"] == "missing" else f", got {error['input']!r}"
        lines.append(f"{where}: {error['msg']}{got}{hint}")
    return "; ".join(lines)
