"""The plan's ``tasks``, ``task_runner`` and ``task_groups``: what each site runs a round,
with what code, and which sites run which tasks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from bastion.spec.names import repeated
from bastion.spec.strict import NAME_PATTERN, Strict


class TaskSpec(Strict):
    """A unit of work a collaborator runs each round."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["train", "validate"]
    model: Literal["global", "local"] = Field(
        default="global",
        description="validate: evaluate the round's global model or the locally trained one",
    )
    args: dict[str, Any] = Field(default_factory=dict)
    metrics_aggregation: Literal["weighted_mean", "mean", "min", "max"] = "weighted_mean"

    @model_validator(mode="after")
    def _train_uses_global(self) -> TaskSpec:
        if self.kind == "train" and self.model != "global":
            raise ValueError("a train task always starts from the global model; remove 'model'")
        return self


class RunnerSpec(Strict):
    """Builds the collaborator's ``TaskRunner``: ``module:function`` in the workspace."""

    path: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)


class TaskGroupSpec(Strict):
    """Collaborators that run the same tasks: named ones, a fraction of the roster, or the rest.

    ``collaborators`` fixes the members by name; ``fraction`` takes that share of the roster
    (rounded, at least one) from those not named elsewhere, drawn with the groups' seed;
    a group with neither takes everyone left. Tasks run in plan order.
    """

    name: str = Field(pattern=NAME_PATTERN)
    tasks: list[str] = Field(min_length=1)
    collaborators: list[str] | None = Field(default=None, min_length=1)
    fraction: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_way_to_choose_members(self) -> TaskGroupSpec:
        if self.collaborators is not None and self.fraction is not None:
            raise ValueError(
                f"task group {self.name!r}: give either 'collaborators' or 'fraction', not both"
            )
        for label, values in (("tasks", self.tasks), ("collaborators", self.collaborators or [])):
            twice = repeated(values)
            if twice:
                raise ValueError(f"task group {self.name!r}: {label} repeated: {twice}")
        return self


class TaskGroupsSpec(Strict):
    """Task groups: which collaborators run which tasks; ``random`` redraws fractions per round."""

    mode: Literal["static", "random"] = Field(
        default="static",
        description="static: fraction groups drawn once from the seed; random: redrawn every round",
    )
    seed: int = Field(default=0, ge=0)
    groups: list[TaskGroupSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent_groups(self) -> TaskGroupsSpec:
        names = [g.name for g in self.groups]
        twice = repeated(names)
        if twice:
            raise ValueError(f"task group names must be unique; repeated: {twice}")
        rest = [g.name for g in self.groups if g.collaborators is None and g.fraction is None]
        if len(rest) > 1:
            raise ValueError(
                f"only one task group may take the remaining collaborators (no 'collaborators' "
                f"or 'fraction'); these do: {rest}"
            )
        total = sum(g.fraction or 0.0 for g in self.groups)
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fractions of the task groups add up to {total:g}, over 1")
        owner: dict[str, str] = {}
        for group in self.groups:
            for member in group.collaborators or []:
                if member in owner:
                    raise ValueError(
                        f"collaborator {member!r} is in task groups {owner[member]!r} and "
                        f"{group.name!r}; a collaborator belongs to one group"
                    )
                owner[member] = group.name
        return self
