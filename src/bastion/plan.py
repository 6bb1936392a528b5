"""``plan.yaml``: what to train, how, and with whom.

The plan is parsed into strict pydantic models: an unknown key, a wrong type or a
value out of range is reported as one line naming the key path and the fix. Each section's
model lives in ``bastion.spec``; this module holds the whole plan, its roster, the checks
that span sections, and loading.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from bastion.errors import PlanError
from bastion.spec.asynchronous import AsynchronousSpec, asynchronous_problem
from bastion.spec.attestation import AttestationSpec
from bastion.spec.compression import CompressionSpec, check_plan_composition
from bastion.spec.data import DataSpec
from bastion.spec.differential_privacy import (
    CENTRAL_STRATEGY,
    DifferentialPrivacySpec,
    central_dp_problem,
)
from bastion.spec.names import repeated
from bastion.spec.network import NetworkSpec
from bastion.spec.output import OutputSpec
from bastion.spec.rounds import AggregationSpec, BestModelSpec, ParticipationSpec, TimeoutSpec
from bastion.spec.secure_aggregation import SecureAggregationSpec, secure_aggregation_problem
from bastion.spec.strict import CALLABLE_PATTERN, NAME_PATTERN, Strict
from bastion.spec.tasks import RunnerSpec, TaskGroupsSpec, TaskSpec
from bastion.spec.tracking import TrackingSpec

PLAN_FILE = "plan.yaml"


class CollaboratorEntry(Strict):
    """One data site on the roster; ``name`` must equal the CN of its certificate."""

    name: str = Field(pattern=NAME_PATTERN)
    shard: int | None = Field(
        default=None, ge=0, description="data shard index; default: roster position"
    )


class Plan(Strict):
    """The whole federation plan."""

    version: Literal[1] = 1
    name: str = Field(min_length=1)
    rounds: int = Field(ge=1, le=100_000)
    collaborators: list[CollaboratorEntry] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    task_runner: RunnerSpec
    data: DataSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)
    participation: ParticipationSpec = Field(default_factory=ParticipationSpec)
    timeouts: TimeoutSpec = Field(default_factory=TimeoutSpec)
    best_model: BestModelSpec = Field(default_factory=BestModelSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    attestation: AttestationSpec | None = None
    differential_privacy: DifferentialPrivacySpec | None = None
    compression: CompressionSpec | None = None
    secure_aggregation: SecureAggregationSpec | None = None
    asynchronous: AsynchronousSpec | None = None
    task_groups: TaskGroupsSpec | None = None
    tracking: TrackingSpec | None = None
    assigner: str | None = Field(
        default=None,
        pattern=CALLABLE_PATTERN,
        description="module:function given (participants, round) returning task names per collaborator",
    )

    # The folder the plan was loaded from: where ``assigner`` and other task code is imported.
    _workspace: Path | None = PrivateAttr(default=None)

    @field_validator("collaborators", mode="before")
    @classmethod
    def _names_as_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("task_groups", mode="before")
    @classmethod
    def _groups_as_list(cls, value: Any) -> Any:
        """``task_groups: [...]`` is short for ``task_groups: {groups: [...]}``."""
        return {"groups": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        names = [c.name for c in self.collaborators]
        duplicates = repeated(names)
        if duplicates:
            raise ValueError(f"collaborator names must be unique; repeated: {duplicates}")
        if self.network.aggregator_name in names:
            raise ValueError(
                f"network.aggregator_name {self.network.aggregator_name!r} is also a collaborator"
            )
        task_names = [t.name for t in self.tasks]
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"task names must be unique; got {task_names}")
        if not any(t.kind == "train" for t in self.tasks):
            raise ValueError("tasks: at least one task must have kind 'train'")
        if self.participation.min_collaborators > len(names):
            raise ValueError(
                f"participation.min_collaborators ({self.participation.min_collaborators}) "
                f"exceeds the roster size ({len(names)})"
            )
        if self.timeouts.min_results > len(names):
            raise ValueError(
                f"timeouts.min_results ({self.timeouts.min_results}) exceeds the roster size ({len(names)})"
            )
        task = self.best_model.task
        if task is not None and not any(
            t.name == task and t.kind == "validate" for t in self.tasks
        ):
            raise ValueError(f"best_model.task {task!r} is not a validate task of this plan")
        if self.task_groups is not None:
            if self.assigner is not None:
                raise ValueError(
                    "task_groups: give either task_groups or assigner; "
                    "the assigner hook decides the tasks itself"
                )
            self._check_task_groups(self.task_groups, names)
        problem = central_dp_problem(
            self.aggregation.strategy,
            self.aggregation.args,
            self.participation.fraction,
            self.participation.sampling,
            self.participation.min_collaborators,
            len(names),
            self.differential_privacy,
        )
        if problem is None:
            problem = secure_aggregation_problem(
                self.aggregation.strategy,
                self.secure_aggregation,
                len(names),
                compression=self.compression is not None,
                train_tasks=None
                if self.task_groups or self.assigner
                else sum(t.kind == "train" for t in self.tasks),
            )
        if problem is None:
            problem = asynchronous_problem(
                self.asynchronous,
                self.aggregation.strategy,
                len(names),
                secure_aggregation=self.uses_secure_aggregation,
                central_dp=self.aggregation.strategy == CENTRAL_STRATEGY,
                compression=self.compression is not None,
            )
        if problem is None and self.compression is not None:
            problem = check_plan_composition(
                self.compression, secure_aggregation=self.uses_secure_aggregation
            )
        if problem is not None:
            raise ValueError(problem)
        return self

    def _check_task_groups(self, spec: TaskGroupsSpec, roster: list[str]) -> None:
        by_name = {t.name: t for t in self.tasks}
        trains = False
        for group in spec.groups:
            unknown = [t for t in group.tasks if t not in by_name]
            if unknown:
                raise ValueError(
                    f"task_groups: task group {group.name!r} names tasks {unknown} that the plan "
                    f"does not define; its tasks are {list(by_name)}"
                )
            strangers = [c for c in group.collaborators or [] if c not in roster]
            if strangers:
                raise ValueError(
                    f"task_groups: task group {group.name!r} names {strangers}, "
                    f"who are not on the roster {roster}"
                )
            kinds = [by_name[t] for t in group.tasks]
            has_train = any(t.kind == "train" for t in kinds)
            trains = trains or has_train
            local = [t.name for t in kinds if t.kind == "validate" and t.model == "local"]
            if local and not has_train:
                raise ValueError(
                    f"task_groups: task group {group.name!r} validates the local model ({local}) "
                    "but trains nothing; add a train task to the group or validate the global model"
                )
        if not trains:
            raise ValueError(
                "task_groups: no task group runs a train task, so no round could change the model"
            )

    # ------------------------------------------------------------------ helpers

    @property
    def workspace(self) -> Path | None:
        """The folder this plan was read from (None for a plan built in memory)."""
        return self._workspace

    @property
    def uses_secure_aggregation(self) -> bool:
        return self.secure_aggregation is not None and self.secure_aggregation.enabled

    @property
    def is_asynchronous(self) -> bool:
        return self.asynchronous is not None and self.asynchronous.enabled

    def collaborator_names(self) -> list[str]:
        return [c.name for c in self.collaborators]

    def shards(self) -> dict[str, int]:
        """Each collaborator's shard of a simulation split, in one pass over the roster
        (a simulation of thousands of clients looks them up by name)."""
        return {
            entry.name: entry.shard if entry.shard is not None else position
            for position, entry in enumerate(self.collaborators)
        }

    def shard_of(self, name: str) -> int:
        shard = self.shards().get(name)
        if shard is not None:
            return shard
        raise PlanError(f"{name!r} is not on the plan's roster: {self.collaborator_names()}")

    def shard_count(self) -> int:
        return max(self.shards().values()) + 1

    def best_task(self) -> str | None:
        if self.best_model.task:
            return self.best_model.task
        for task in self.tasks:
            if task.kind == "validate" and task.model == "global":
                return task.name
        return None

    def canonical_hash(self) -> str:
        """SHA-256 of the plan's canonical JSON: equal for plans that mean the same."""
        data = self.model_dump(mode="json")
        if not self.participation.open_roster:  # plans written before the field keep their hash
            del data["participation"]["open_roster"]
        if self.tracking is None:  # nor do plans written before tracking
            del data["tracking"]
        if self.asynchronous is None:  # nor synchronous plans, written before it existed
            del data["asynchronous"]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_plan(path: Path | str) -> Plan:
    """Read and validate a plan file, or raise ``PlanError`` with one clear line."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(f"{path}: larger than {MAX_PLAN_BYTES >> 20} MiB; not a plan")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(
            f"{path}: no plan here; create a workspace with `bastion workspace create DIR "
            "--template NAME` or pass --workspace"
        ) from None
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not a UTF-8 text file") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PlanError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise PlanError(
            f"{path}: the plan must be a mapping of keys (name, rounds, ...), got {type(raw).__name__}"
        )
    return parse_plan(raw, source=str(path), workspace=path.parent)


#: A plan is a few kilobytes; together with refusing aliases this bounds what parsing (and
#: hashing) an untrusted plan can cost before it is compared with the signed manifest.
MAX_PLAN_BYTES = 4 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: ``*name`` could expand a small file into gigabytes (a
    "billion laughs") before anything compares it with the signed manifest."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a plan", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Parse plan YAML safely: no tags beyond YAML's own, no aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def parse_plan(raw: dict[str, Any], source: str = PLAN_FILE, workspace: Path | None = None) -> Plan:
    """Validate a plan mapping; ``workspace`` is where its code (e.g. ``assigner``) lives."""
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        raise PlanError(f"{source}: {describe_validation_error(exc, raw)}") from None
    plan._workspace = Path(workspace).resolve() if workspace is not None else None
    return plan


def plan_problems(path: Path | str) -> tuple[Plan | None, list[str]]:
    """Every problem of a plan file at once, one line each with its key path; and the plan
    when it parses (``bastion plan validate`` then checks what the plan names)."""
    try:
        return load_plan(path), []
    except PlanError as exc:
        first = str(exc)
    path = Path(path)
    path = path / PLAN_FILE if path.is_dir() else path
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            return None, [first]
        Plan.model_validate(raw)
    except ValidationError as exc:
        return None, [
            f"{path}: {describe_validation_error(exc, raw, index, count_others=False)}"
            for index in range(exc.error_count())
        ]
    except Exception:  # not YAML, not a mapping: the first message says it all
        pass
    return None, [first]


def describe_validation_error(
    exc: ValidationError, raw: Any, index: int = 0, count_others: bool = True
) -> str:
    """One line for error ``index``: the dotted key path, what is wrong, and the fix; the
    first error's line says how many more there are."""
    error = exc.errors()[index]
    path = _dotted(error["loc"], raw)
    kind = error["type"]
    more = exc.error_count() - 1
    extra = (
        f" (and {more} more: `bastion plan validate` lists them)" if more and count_others else ""
    )
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key '{path}'{hint}{extra}"
    if kind == "missing":
        return f"missing required key '{path}'{extra}"
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if path:
        return f"key '{path}': {message} (got {error.get('input')!r}){extra}"
    return f"{message}{extra}"


def _dotted(loc: tuple[Any, ...], raw: Any) -> str:
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                entry = node[item]
                if isinstance(entry, dict) and "name" in entry:
                    label = f"[{entry['name']}]"
                node = entry
            parts.append(label)
        else:
            if not re.match(r"^[A-Za-z_][\w-]*$", str(item)):
                continue  # pydantic's internal tags such as 'function-after[...]'
            parts.append(f".{item}" if parts else str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Plan
    for item in loc:
        if isinstance(item, int) or model is None:
            continue
        field = model.model_fields.get(item) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return sorted(model.model_fields) if model is not None else []
