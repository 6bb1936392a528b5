"""The Lightning adapter: exact round trips in every dtype, buffers, optimizer state, Trainer quiet."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire
from support.torch_modules import DEVICES, TORCH_DTYPES, native_bytes, randomize
from torch import nn

from bastion.data import load_dataset, make_shard
from bastion.data.types import DataShard
from bastion.runners.base import TaskRunner
from bastion.runners.lightning import LightningRunner
from bastion.tensors import Weights


class Classifier(pl.LightningModule):
    """64 - 16 (BatchNorm, ReLU) - 10, SGD with momentum."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("accuracy", (self(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def small_shard() -> DataShard:
    return make_shard(load_dataset("digits"), index=0, count=20)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_dtype_round_trips_through_wire_and_checkpoint(
    dtype: torch.dtype, device: str, tmp_path: Path
) -> None:
    source = LightningRunner(Classifier().to(dtype), device=device)
    assert isinstance(source, TaskRunner)
    randomize(source.module, seed=1)
    sent = source.get_weights()
    assert list(sent) == list(source.module.state_dict())  # the module's own stable order
    target = LightningRunner(Classifier().to(dtype), device=device)
    randomize(target.module, seed=2)
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert native_bytes(target.module) == native_bytes(source.module)
    assert_same_weights(target.get_weights(), sent)


def test_buffers_federate_by_default_and_stay_local_on_request() -> None:
    shared = LightningRunner(Classifier()).get_weights()
    assert {"net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked"} <= set(shared)
    local = LightningRunner(Classifier(), local_buffers=True).get_weights()
    assert not any(name.startswith("net.1.running") for name in local)
    assert "net.1.weight" in local  # BatchNorm's affine parameters still federate


def _one_step_twice(optimizer_state: str) -> tuple[Weights, Weights]:
    torch.manual_seed(0)
    shard = small_shard()
    runner = LightningRunner(Classifier(), optimizer_state=optimizer_state, device="cpu")
    start = runner.get_weights()
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    first = runner.get_weights()
    runner.set_weights(start)
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    return first, runner.get_weights()


def test_optimizer_state_reset_and_keep() -> None:
    first, second = _one_step_twice("reset")
    assert all(np.allclose(first[n], second[n], rtol=1e-5, atol=1e-6) for n in first)
    first, second = _one_step_twice("keep")
    assert not np.allclose(first["net.3.weight"], second["net.3.weight"], rtol=1e-3, atol=1e-4)


def test_trainer_runs_quietly_without_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No progress bar, summary or checkpoint folder inside a collaborator unless asked."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    runner = LightningRunner(Classifier(), device="cpu")
    shard = make_shard(load_dataset("digits"), index=0, count=4)
    before = runner.validate(shard).metrics["accuracy"]
    result = runner.train(shard, epochs=2, batch_size=16)
    assert result.example_count == shard.train_count
    assert np.isfinite(result.metrics["train_loss"])
    assert before < 0.3 < 0.7 < runner.validate(shard).metrics["accuracy"]
    captured = capsys.readouterr()
    assert "Epoch" not in captured.out + captured.err
    assert list(tmp_path.iterdir()) == []  # no lightning_logs/, no checkpoints
