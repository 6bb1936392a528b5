"""What a round is made of, and what a collaborator's result must satisfy.

Plain records and stateless checks, shared by the aggregator's state machine, its
secure-aggregation and local-privacy hooks, the transports and the Ray simulation's
workers, so none of them has to import the state machine to check a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


from bastion.aggregator.assignment import Assignments
from bastion.errors import UpdateRejected
from bastion.protocol import Assignment, NotAssigned, UnknownCollaborator
from bastion.plan import TaskSpec
from bastion.tensors import TensorSpec, Weights, validate_update

MAX_METRICS = 64
MAX_EXAMPLE_COUNT = 10**12


@dataclass
class TaskRecord:
    collaborator: str
    example_count: int
    metrics: dict[str, float]


@dataclass
class RoundProgress:
    number: int
    final_evaluation: bool
    assignments: Assignments
    pending: dict[str, list[str]]
    started: float
    results: dict[str, list[TaskRecord]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)


def check_metrics(metrics: Mapping[str, float]) -> None:
    """Raise ``UpdateRejected`` for too many metrics, bad names, or values that are not finite."""
    if len(metrics) > MAX_METRICS:
        raise UpdateRejected(f"{len(metrics)} metrics sent; at most {MAX_METRICS} allowed")
    for key, value in metrics.items():
        if not key or len(key) > 128:
            raise UpdateRejected("metric names must be 1..128 characters")
        if not math.isfinite(value):
            raise UpdateRejected(f"metric {key!r} is not finite ({value})")


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
    if not 0 <= example_count <= MAX_EXAMPLE_COUNT:
        raise UpdateRejected(f"example count {example_count} out of range")
    if task.kind == "train":
        if weights is None:
            raise UpdateRejected(f"training task {task.name!r} sent no weights")
        if example_count <= 0:
            raise UpdateRejected("a training result must report a positive example count")
        validate_update(model_spec, weights)
    elif weights:
        raise UpdateRejected(f"validation task {task.name!r} must not send weights")
