"""A LightningModule and LightningDataModule for digits: the model this workspace federates."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bastion.data.types import DataShard
from bastion.runners.lightning import LightningRunner


class DigitsClassifier(pl.LightningModule):
    """64 - 64 (BatchNorm, ReLU) - 10, trained with SGD and momentum."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        return loss, accuracy

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        loss, accuracy = self._step(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.log("train_accuracy", accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        loss, accuracy = self._step(batch)
        self.log("loss", loss, on_epoch=True)
        self.log("accuracy", accuracy, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class ShardDataModule(pl.LightningDataModule):
    """This site's shard as train and validation loaders."""

    def __init__(self, shard: DataShard, batch_size: int) -> None:
        super().__init__()
        self.shard, self.batch_size = shard, batch_size

    def _dataset(self, x: Any, y: Any) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())

    def train_dataloader(self) -> DataLoader[Any]:
        dataset = self._dataset(self.shard.x_train, self.shard.y_train)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        dataset = self._dataset(self.shard.x_valid, self.shard.y_valid)
        return DataLoader(dataset, batch_size=256)


def build_runner(
    seed: int = 0,
    threads: int | None = None,
    local_buffers: bool = False,
    optimizer_state: str = "reset",
    trainer_args: dict[str, Any] | None = None,
) -> LightningRunner:
    torch.manual_seed(seed)
    return LightningRunner(
        DigitsClassifier(),
        ShardDataModule,
        threads=threads,
        seed=seed,
        local_buffers=local_buffers,
        optimizer_state=optimizer_state,
        trainer_args=trainer_args,
    )
