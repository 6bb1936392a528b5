"""What a round is made of, and what a collaborator's result must satisfy.

Plain records and stateless checks, shared by the round engine, its round protocols
and observers, and the Ray simulation's workers, so none of them has to import the
engine to check a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion.aggregator.assignment import Assignments
from bastion.aggregator.influence import InfluenceBounds, robust_mean
from bastion.errors import UpdateRejected
from bastion.plan import Plan
from bastion.spec.tasks import TaskSpec
from bastion.tensors import TensorSpec, Weights, total_bytes, validate_update

MAX_METRICS = 64
#: The longest reason a site may give for a decline or a failure.
MAX_REASON = 1000
MAX_EXAMPLE_COUNT = 10**12


#: A compressed payload (indices and values, a codebook) may outgrow the model it encodes.
COMPRESSED_FACTOR = 4
PLAIN_FACTOR = 2
SLACK_BYTES = 1 << 16


def update_limit(plan: Plan, model: Weights) -> int:
    """The most bytes one update may take, from the model's size: a plain update's tensors
    are also checked against the model's as they arrive (so no more than the model is ever
    allocated), a compressed one is bounded by a multiple; never more than the plan's
    ``network.max_update_mib``."""
    factor = COMPRESSED_FACTOR if plan.compression is not None else PLAIN_FACTOR
    return min(plan.network.max_update_bytes, factor * total_bytes(model) + SLACK_BYTES)


@dataclass
class TaskRecord:
    collaborator: str
    example_count: int
    metrics: dict[str, float]


@dataclass
class CarriedWork:
    """A site's tasks of an earlier round that closed while it still worked on them (an
    overlapping round protocol): their results are taken into a later round."""

    round: int
    tasks: tuple[TaskSpec, ...]
    pending: list[str]


class PendingTasks(dict[str, list[str]]):
    """Each assigned collaborator's tasks still to hand in, keeping count of those with any.

    The engine asks how many still work at every request and result; in a final evaluation
    of thousands of clients a recount each time was quadratic. A collaborator's list is
    replaced, never changed in place, so every change passes ``__setitem__`` or
    ``__delitem__``; dict methods that would bypass them are refused.
    """

    def __init__(self, tasks: Mapping[str, list[str]] | None = None) -> None:
        super().__init__()
        self.working = 0
        for name, names in (tasks or {}).items():
            self[name] = names

    def __setitem__(self, name: str, tasks: list[str]) -> None:
        self.working += bool(tasks) - bool(self.get(name))
        super().__setitem__(name, tasks)

    def __delitem__(self, name: str) -> None:
        self.working -= bool(self.get(name))
        super().__delitem__(name)

    def __reduce__(self) -> tuple[type[PendingTasks], tuple[dict[str, list[str]]]]:
        """Copies and pickles are rebuilt through ``__init__``, which counts afresh."""
        return (PendingTasks, (dict(self),))

    def _bypass(self, *args: object, **kwargs: object) -> Any:
        raise TypeError("PendingTasks changes by item assignment or del only")

    pop = popitem = setdefault = update = clear = __ior__ = _bypass


@dataclass
class RoundProgress:
    number: int
    final_evaluation: bool
    assignments: Assignments
    pending: PendingTasks
    started: float
    results: dict[str, list[TaskRecord]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.pending, PendingTasks):
            self.pending = PendingTasks(self.pending)

    def hand_in(self, collaborator: str, kind: str) -> None:
        """``collaborator``'s pending tasks of ``kind`` no longer come as results."""
        pending = self.pending.get(collaborator)
        if pending:
            kinds = {t.name for t in self.assignments.get(collaborator, ()) if t.kind == kind}
            self.pending[collaborator] = [task for task in pending if task not in kinds]

    def waiting_for(self) -> list[str]:
        """Collaborators with tasks still to hand in, sorted."""
        return sorted(name for name, tasks in self.pending.items() if tasks)

    def working(self) -> int:
        """How many collaborators have tasks still to hand in (kept as it changes)."""
        return self.pending.working


def summarize_metrics(
    progress: RoundProgress, rules: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Each task's metrics over its results, combined by the task's ``metrics_aggregation``."""
    summary: dict[str, dict[str, float]] = {}
    for task, records in progress.results.items():
        total = sum(r.example_count for r in records)
        names = sorted({k for r in records for k in r.metrics})
        out: dict[str, float] = {"examples": float(total)}
        for name in names:
            pairs = [(r.metrics[name], r.example_count) for r in records if name in r.metrics]
            rule = rules.get(task, "weighted_mean")
            values = [v for v, _ in pairs]
            if rule == "weighted_mean" and sum(n for _, n in pairs) > 0:
                out[name] = robust_mean(pairs)
            elif rule == "min":
                out[name] = min(values)
            elif rule == "max":
                out[name] = max(values)
            else:
                out[name] = sum(values) / len(values)
        summary[task] = out
    return summary


def check_metrics(metrics: Mapping[str, float]) -> None:
    """Raise ``UpdateRejected`` for too many metrics, bad names, or values that are not finite."""
    if len(metrics) > MAX_METRICS:
        raise UpdateRejected(f"{len(metrics)} metrics sent; at most {MAX_METRICS} allowed")
    for key, value in metrics.items():
        if not key or len(key) > 128:
            raise UpdateRejected("metric names must be 1..128 characters")
        if not math.isfinite(value):
            raise UpdateRejected(f"metric {key!r} is not finite ({value})")


def check_count_range(example_count: int) -> None:
    """Raise ``UpdateRejected`` for an example count outside [0, 10^12]."""
    if not 0 <= example_count <= MAX_EXAMPLE_COUNT:
        raise UpdateRejected(f"example count {example_count} out of range")


def check_header(
    example_count: int,
    metrics: Mapping[str, float],
    bounds: InfluenceBounds,
    collaborator: str,
) -> None:
    """The checks ``checked_content`` makes on a training result before its tensors, in its
    order: the streaming intake makes them when the header arrives."""
    check_metrics(metrics)
    bounds.check_count(collaborator, example_count)
    bounds.check_metrics(metrics)
    check_count_range(example_count)
    if example_count <= 0:
        raise UpdateRejected("a training result must report a positive example count")


def validate_result(
    task: TaskSpec,
    example_count: int,
    metrics: Mapping[str, float],
    weights: Weights | None,
    model_spec: Sequence[TensorSpec],
) -> None:
    """A result's content checks, needing no round state: an ``UpdateRejected`` if it fails.

    ``weights`` is the decoded update (after decompression) and ``model_spec`` the global
    model's tensor specs; the aggregator and the Ray simulation's workers both call this.
    """
    check_metrics(metrics)
    check_count_range(example_count)
    if task.kind == "train":
        if weights is None:
            raise UpdateRejected(f"training task {task.name!r} sent no weights")
        if example_count <= 0:
            raise UpdateRejected("a training result must report a positive example count")
        validate_update(model_spec, weights)
    elif weights:
        raise UpdateRejected(f"validation task {task.name!r} must not send weights")


def checked_content(
    task: TaskSpec,
    example_count: int,
    metrics: Mapping[str, float],
    payload: Weights | None,
    model: Weights,
    model_spec: Sequence[TensorSpec],
    round_number: int,
    decode: Callable[[Weights, Weights, int], Weights],
    bounds: InfluenceBounds | None = None,
    collaborator: str = "",
) -> Weights | None:
    """A result's update after decoding its training payload, once every content check passed.

    Raises ``UpdateRejected``. The engine and the Ray simulation's workers both call this,
    so a simulated client hears the answer the aggregator will give it.
    """
    weights = payload
    if bounds is not None:
        check_metrics(metrics)
        bounds.check_count(collaborator, example_count)
        bounds.check_metrics(metrics)
    if task.kind == "train" and payload is not None:
        weights = decode(payload, model, round_number)
    validate_result(task, example_count, metrics, weights, model_spec)
    if bounds is not None and task.kind == "train" and weights is not None:
        weights = bounds.bound_update(collaborator, weights, model)
    return weights
