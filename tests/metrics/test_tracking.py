"""Experiment tracking from a real federation (aggregator and two collaborators as processes
over mutual TLS): TensorBoard event files read back with TensorBoard's own reader, and an
MLflow run on a local ``mlflow server`` read back with ``MlflowClient``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.federations import SITES, run_template_federation

ROUNDS = 3


def _scalars(logdir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_event_files_hold_every_rounds_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="pip install -e '.[tensorboard]'")
    run = run_template_federation(
        tmp_path, "numpy_logreg_digits", "bastion.runners.numpy", "numpy", ROUNDS
    )
    logdir = next(tmp_path.glob("**/logs/tensorboard"))
    scalars = _scalars(logdir)
    accuracy = scalars["global/validate_global/accuracy"]
    assert sorted(accuracy) == list(range(1, ROUNDS + 1))
    # the record of round r validates the model of round r - 1: the metrics log's accuracy
    assert [round(accuracy[r], 5) for r in sorted(accuracy)] == [
        round(a, 5) for a in run.accuracy[:ROUNDS]
    ]
    for site in SITES:
        assert sorted(scalars[f"site/{site}/train/loss"]) == list(range(1, ROUNDS + 1))
    assert "final/validate_global/accuracy" in scalars


def test_mlflow_run_has_params_metrics_and_the_model(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    work = tmp_path / "fed"
    run = run_template_federation(
        work, "numpy_logreg_digits", "bastion.runners.numpy", "numpy", ROUNDS,
        plan_changes={"tracking": {"mlflow": {"uri": mlflow_server, "experiment": "digits"}}},
    )  # fmt: skip
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["rounds"] == str(ROUNDS)
    history = client.get_metric_history(found.info.run_id, "validate_global/accuracy")
    assert sorted(m.step for m in history) == list(range(1, ROUNDS + 1))
    assert [round(m.value, 5) for m in sorted(history, key=lambda m: m.step)] == [
        round(a, 5) for a in run.accuracy[:ROUNDS]
    ]
    assert "final/validate_global/accuracy" in found.data.metrics
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id, "model")]
    assert "model/best.safetensors" in artifacts or "model/last.safetensors" in artifacts
    local = client.download_artifacts(found.info.run_id, "model", str(tmp_path / "dl"))
    from bastion.storage.checkpoints import load_checkpoint

    weights, _ = load_checkpoint(next(Path(local).glob("*.safetensors")))
    assert weights
