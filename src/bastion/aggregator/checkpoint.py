"""Durable aggregator state: every round is one atomic safetensors file.

``last.safetensors`` holds the global model, the strategy's state (under the
``strategy/`` prefix) and the round counter in its metadata, written with temp file,
fsync and rename; so after a crash at any instant it holds one whole round. Resuming
needs nothing else. ``state.json`` is a human-readable summary for ``bastion status``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import BastionError
from bastion.tensors import Weights, atomic_write_bytes, load_checkpoint, save_checkpoint

INITIAL = "initial.safetensors"
LAST = "last.safetensors"
BEST = "best.safetensors"
STATE = "state.json"
STRATEGY_PREFIX = "strategy/"


@dataclass
class RoundState:
    """Where the federation stands; stored in the checkpoint's metadata."""

    round_completed: int = 0
    finished: bool = False
    best_value: float | None = None
    best_round: int | None = None

    def to_metadata(self) -> dict[str, str]:
        return {"bastion.state": json.dumps(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> RoundState:
        raw = json.loads(metadata.get("bastion.state", "{}"))
        return cls(**raw)


@dataclass
class Resumed:
    model: Weights
    strategy_state: Weights
    state: RoundState
    source: Path
    extra: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """Reads and writes the checkpoints of one workspace's aggregator."""

    def __init__(self, directory: Path, plan_hash: str) -> None:
        self.directory = Path(directory)
        self.plan_hash = plan_hash

    def path(self, name: str) -> Path:
        return self.directory / name

    def save_initial(self, model: Weights) -> Path:
        path = self.path(INITIAL)
        save_checkpoint(
            path, model, {"bastion.plan_hash": self.plan_hash, **RoundState().to_metadata()}
        )
        return path

    def load(self) -> Resumed:
        """The newest whole state: the last round if any, else the initial model."""
        for name in (LAST, INITIAL):
            path = self.path(name)
            if path.exists():
                tensors, metadata = load_checkpoint(path)
                saved_hash = metadata.get("bastion.plan_hash")
                if saved_hash != self.plan_hash:
                    raise BastionError(
                        f"{path} was written for a different plan (plan hash {str(saved_hash)[:12]}…, "
                        f"this plan {self.plan_hash[:12]}…); run `bastion plan initialize --force` "
                        "to start over, or restore the plan it was made with"
                    )
                model = {k: v for k, v in tensors.items() if not k.startswith(STRATEGY_PREFIX)}
                strategy = {
                    k[len(STRATEGY_PREFIX) :]: v
                    for k, v in tensors.items()
                    if k.startswith(STRATEGY_PREFIX)
                }
                return Resumed(model, strategy, RoundState.from_metadata(metadata), path)
        raise BastionError(
            f"no initial model in {self.directory}; run `bastion plan initialize` in the workspace first"
        )

    def save_round(self, model: Weights, strategy_state: Weights, state: RoundState) -> None:
        tensors = dict(model)
        for name, value in strategy_state.items():
            tensors[STRATEGY_PREFIX + name] = value
        metadata = {"bastion.plan_hash": self.plan_hash, **state.to_metadata()}
        save_checkpoint(self.path(LAST), tensors, metadata)

    def save_best(self, model: Weights, round_number: int, value: float) -> None:
        metadata = {
            "bastion.plan_hash": self.plan_hash,
            "bastion.best_round": str(round_number),
            "bastion.best_value": repr(value),
        }
        save_checkpoint(self.path(BEST), model, metadata)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.path(STATE), json.dumps(summary, indent=2).encode())

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path(STATE)
        if not path.exists():
            return None
        return dict(json.loads(path.read_text(encoding="utf-8")))
