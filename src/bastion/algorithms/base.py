"""The streaming strategy interface every server-side aggregation rule implements.

A round is ``begin_round(global)``, then one ``accumulate`` per accepted result as it
arrives, then ``finalize()``. Rules that can fold results in (FedAvg, FedOpt) keep
O(model) memory; rules that need all updates at once spill them to disk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from bastion.tensors import Scratch, Weights, blocks


class Strategy(ABC):
    """A server-side aggregation rule.

    ``update`` is always the collaborator's full local model after training (not a
    delta); ``weight`` is its example count unless the plan says otherwise.
    """

    #: Name used in ``plan.yaml`` (``aggregation.strategy``).
    name: ClassVar[str]

    @abstractmethod
    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        """Start a round whose starting point is ``global_weights``."""

    @abstractmethod
    def accumulate(self, collaborator: str, update: Weights, weight: float) -> None:
        """Fold in one validated result."""

    @abstractmethod
    def finalize(self) -> Weights:
        """Return the new global model; called once, after at least one accumulate."""

    @property
    @abstractmethod
    def accepted(self) -> int:
        """How many results were accumulated this round."""

    def state_dict(self) -> Weights:
        """Arrays to checkpoint with the model (optimizer moments); empty when stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned, so a resumed federation continues exactly."""
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state but got {sorted(state)[:3]}")

    def close(self) -> None:  # noqa: B027 - an optional hook; most strategies hold nothing
        """Release disk spill files or other resources."""


@runtime_checkable
class FoldsChunks(Protocol):
    """A strategy whose ``accumulate`` is a sum of per-element folds (FedAvg and the FedOpt
    family), so a result can be folded chunk by chunk as it streams in and taken back."""

    def begin_round(self, global_weights: Weights, round_number: int) -> None: ...

    def fold(self, name: str, start: int, values: np.ndarray, weight: float) -> None:
        """Add ``weight`` x the flat elements ``values`` of tensor ``name`` from ``start``."""
        ...

    def count_folded(self, weight: float) -> None:
        """One result's folds are complete: it counts, with ``weight``."""
        ...


def cast_like(values: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> Weights:
    """Cast aggregated float64 arrays back to the dtypes of ``like`` (rounding integer tensors)."""
    out: Weights = {}
    for name, reference in like.items():
        value = values[name]
        if reference.dtype.kind in "iub":
            value = np.rint(value)
        out[name] = value.astype(reference.dtype, copy=False)
    return out


def add_scaled(
    total: np.ndarray, value: np.ndarray, weight: float, scratch: Scratch | None = None
) -> None:
    """``total += weight * value`` in float64, block by block through ``scratch``: no
    model-sized temporaries, and none allocated per block."""
    scratch = scratch or Scratch()
    flat_total = total.reshape(-1)
    flat_value = value.reshape(-1)
    for part in blocks(flat_total):
        step = scratch.take(np.float64, part.stop - part.start)
        np.multiply(flat_value[part], weight, out=step, dtype=np.float64)
        flat_total[part] += step


StrategyConfig = dict[str, Any]
