"""Experiment tracking as round observers: TensorBoard event files and an MLflow run.

Per job (workspace): global metrics per round (``global/TASK/METRIC``), each site's
metrics (``site/SITE/TASK/METRIC``), the privacy spend (``privacy/epsilon``) and the final
model's metrics (``final/TASK/METRIC``). MLflow gets the plan as params, the same metrics
per round, and the final model as an artifact, when ``tracking: {mlflow: {uri: ...}}`` is
in the plan or the director (or environment) names one in ``BASTION_MLFLOW_URI``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion.aggregator.events import (
    FederationFinished,
    ResultAccepted,
    RoundEvent,
    RoundObserver,
    RoundReported,
)
from bastion.metrics import tensorboard
from bastion.plan import Plan
from bastion.storage.checkpoints import BEST, LAST

log = logging.getLogger("bastion.aggregator.tracking")

MLFLOW_URI_ENV = "BASTION_MLFLOW_URI"
#: per-site series for this many sites at most (a simulation may have thousands)
MAX_SITE_SERIES = 64


def round_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """``TASK/METRIC`` → value of a round record, plus the privacy spend."""
    found: dict[str, float] = {}
    for task, metrics in (record.get("tasks") or {}).items():
        for key, value in metrics.items():
            if key != "examples" and isinstance(value, (int, float)):
                found[f"{task}/{key}"] = float(value)
    privacy = record.get("privacy")
    if isinstance(privacy, Mapping) and isinstance(privacy.get("epsilon"), (int, float)):
        found["privacy/epsilon"] = float(privacy["epsilon"])
    return found


class TensorBoardObserver(RoundObserver):
    def __init__(self, logdir: Path) -> None:
        self.writer = tensorboard.TensorBoardWriter(logdir)
        self._sites: set[str] = set()

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, ResultAccepted):
            if event.collaborator not in self._sites:
                if len(self._sites) >= MAX_SITE_SERIES:
                    return
                self._sites.add(event.collaborator)
            for key, value in event.metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.scalar(
                        f"site/{event.collaborator}/{event.task}/{key}", value, event.round
                    )
        elif isinstance(event, RoundReported):
            final = bool(event.record.get("final_evaluation"))
            for key, value in round_metrics(event.record).items():
                if key.startswith("privacy/"):
                    self.writer.scalar(key, value, event.round)
                else:
                    self.writer.scalar(("final/" if final else "global/") + key, value, event.round)
            self.writer.flush()
        elif isinstance(event, FederationFinished):
            self.writer.close()


class MlflowObserver(RoundObserver):
    def __init__(self, plan: Plan, uri: str, experiment: str, checkpoints: Path) -> None:
        from bastion.metrics.mlflow import MlflowLogger

        run_name = os.environ.get("BASTION_JOB_ID") or plan.name
        self.logger = MlflowLogger(uri, experiment, run_name)
        self.checkpoints = checkpoints
        self.logger.params(_flatten(plan.model_dump(mode="json")))

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, RoundReported):
            metrics = round_metrics(event.record)
            if event.record.get("final_evaluation"):
                metrics = {f"final/{k}": v for k, v in metrics.items()}
            if metrics:
                self.logger.metrics(metrics, step=event.round)
        elif isinstance(event, FederationFinished):
            for name in (BEST, LAST):
                path = self.checkpoints / name
                if path.is_file():
                    self.logger.artifact(path, "model")
            self.logger.close()


def tracking_observers(plan: Plan, workspace: Path) -> list[RoundObserver]:
    """The observers the plan's ``tracking:`` (and ``BASTION_MLFLOW_URI``) ask for."""
    spec = plan.tracking
    observers: list[RoundObserver] = []
    if spec is None or spec.tensorboard:
        if tensorboard.available():
            logdir = workspace / plan.output.logs / tensorboard.TENSORBOARD_DIR
            observers.append(TensorBoardObserver(logdir))
        elif spec is not None:
            log.warning("tracking.tensorboard: pip install 'bastion-fl[tensorboard]'")
    uri = spec.mlflow.uri if spec is not None and spec.mlflow else os.environ.get(MLFLOW_URI_ENV)
    if uri:
        experiment = (spec.mlflow.experiment if spec and spec.mlflow else None) or plan.name
        observers.append(MlflowObserver(plan, uri, experiment, workspace / plan.output.checkpoints))
    return observers


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}
