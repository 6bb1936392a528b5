"""Workspaces and recording transports for in-process simulation tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bastion.aggregator.engine import Aggregator
from bastion.protocol import Assignment
from bastion.sim.inprocess import InProcessClient
from bastion.tensors import Weights
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace
from support.workspaces import edit_plan

# A small PyTorch MLP on the digits dataset; runner options come from task_runner.args.
TORCH_MLP_TASK = """
import torch
from torch import nn

from bastion.runners.torch import TorchRunner


def build_runner(seed=0, hidden=32, **options):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return TorchRunner(model, seed=seed, threads=1, **options)
"""


def plain_workspace(
    root: Path,
    template: str = "numpy_logreg_digits",
    collaborators: int = 3,
    rounds: int = 2,
    plan_changes: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
    initialize: bool = True,
    folder: str = "ws",
) -> Path:
    """A workspace for in-process runs: template, files, plan edits, initial model; no PKI."""
    workspace = create_workspace(
        root / folder, template, collaborators=collaborators, rounds=rounds
    )
    for name, text in (files or {}).items():
        (workspace / name).write_text(text)
    if plan_changes:
        edit_plan(workspace, plan_changes)
    if initialize:
        initialize_plan(workspace)
    return workspace


@dataclass
class Sent:
    round: int
    collaborator: str
    task: str
    example_count: int
    weights: Weights | None


@dataclass
class Recorder:
    """Builds ``InProcessClient``s that record every assignment received and result sent."""

    received: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    models: dict[tuple[int, str], Weights] = field(default_factory=dict)

    def client(self, aggregator: Aggregator, name: str) -> InProcessClient:
        return RecordingClient(aggregator, name, self)

    def updates(self, round_number: int) -> list[Sent]:
        return [s for s in self.sent if s.round == round_number and s.weights is not None]


class RecordingClient(InProcessClient):
    def __init__(self, aggregator: Aggregator, name: str, recorder: Recorder) -> None:
        super().__init__(aggregator, name)
        self.recorder = recorder

    def get_tasks(self) -> Assignment:
        assignment = super().get_tasks()
        if assignment.action == "run":
            self.recorder.received[(assignment.round, self.name)] = [
                t.name for t in assignment.tasks
            ]
        return assignment

    def get_model(self, round_number: int) -> Weights:
        model = super().get_model(round_number)
        self.recorder.models[(round_number, self.name)] = {k: v.copy() for k, v in model.items()}
        return model

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]:
        copy = {k: np.array(v, copy=True) for k, v in weights.items()} if weights else None
        self.recorder.sent.append(Sent(round_number, self.name, task, example_count, copy))
        return super().send_result(round_number, task, example_count, metrics, weights)
