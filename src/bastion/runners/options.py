"""Plan options every framework adapter shares: which tensors federate, and optimizer state.

They arrive as ``task_runner.args`` (the template's ``build_runner`` passes them on), so
errors name that key path. Only NumPy and the standard library are imported here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from bastion.errors import PlanError

OptimizerState = Literal["reset", "keep"]
OPTIMIZER_STATES: tuple[OptimizerState, ...] = ("reset", "keep")


def optimizer_state_policy(value: str) -> OptimizerState:
    """``reset`` (fresh optimizer every round, the usual federated default) or ``keep`` (local)."""
    if value not in OPTIMIZER_STATES:
        raise PlanError(
            f"key 'task_runner.args.optimizer_state': {value!r} is not a policy; "
            f"use one of {', '.join(OPTIMIZER_STATES)}"
        )
    return cast(OptimizerState, value)


def _patterns(value: str | Sequence[str], key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise PlanError(f"key 'task_runner.args.{key}': expected glob patterns, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class TensorSelection:
    """Which named tensors travel to the aggregator; the rest stay on the site.

    ``federate`` and ``keep_local`` are shell-style globs over tensor names
    (``classifier.*``); a tensor federates if it matches ``federate`` and not
    ``keep_local``. ``local_buffers`` keeps non-trainable state (BatchNorm statistics)
    on the site, as in FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID
    Features via Local Batch Normalization").
    """

    federate: tuple[str, ...] = ("*",)
    keep_local: tuple[str, ...] = ()
    local_buffers: bool = False

    @classmethod
    def from_args(
        cls,
        federate: str | Sequence[str] = ("*",),
        keep_local: str | Sequence[str] = (),
        local_buffers: bool = False,
    ) -> TensorSelection:
        if not isinstance(local_buffers, bool):
            raise PlanError(
                f"key 'task_runner.args.local_buffers': expected true or false, got {local_buffers!r}"
            )
        return cls(
            _patterns(federate, "federate"), _patterns(keep_local, "keep_local"), local_buffers
        )

    def federates(self, name: str, is_buffer: bool = False) -> bool:
        if is_buffer and self.local_buffers:
            return False
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.federate):
            return False
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.keep_local)

    def choose(self, names: Sequence[str], buffers: Collection[str] = ()) -> list[str]:
        """The federated subset of ``names`` in their order; an error if nothing is left."""
        chosen = [name for name in names if self.federates(name, name in buffers)]
        if not chosen:
            shown = ", ".join(list(names)[:8]) + (", ..." if len(names) > 8 else "")
            raise PlanError(
                f"key 'task_runner.args.federate': patterns {list(self.federate)} "
                f"(minus keep_local {list(self.keep_local)}) match none of the model's "
                f"tensors: {shown}"
            )
        return chosen
