"""The PyTorch Lightning adapter: the user's ``LightningModule``, trained by Lightning's Trainer.

Each task builds a fresh ``lightning.pytorch.Trainer`` with progress bars, loggers,
checkpointing and the model summary off (a collaborator logs to Bastion's metrics, and
its model goes to the aggregator, not to disk); ``trainer_args`` in the plan turns any of
them back on. Data comes from a ``LightningDataModule`` or from the shard's arrays.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency
from bastion.runners.base import TaskResult
from bastion.runners.options import TensorSelection, optimizer_state_policy
from bastion.runners.torch_state import ModuleState, resolve_device
from bastion.tensors import Weights

try:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.utilities.warnings import PossibleUserWarning
    from torch.utils.data import DataLoader, TensorDataset
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without lightning
    raise MissingDependency("lightning", "lightning", "the PyTorch Lightning task runner") from exc

DataModuleFactory = Callable[[DataShard, int], pl.LightningDataModule]
"""Builds a site's data module from its shard and the task's batch size."""

# Lightning announces the accelerator and tips at INFO on every Trainer; one per task is noise.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


class _RestoreOptimizers(pl.Callback):
    """Loads the previous round's optimizer state once Lightning has built the optimizers."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != len(self.states):
            raise BastionError(
                f"configure_optimizers returned {len(trainer.optimizers)} optimizers this round "
                f"and {len(self.states)} last round; optimizer_state: keep needs the same ones"
            )
        for optimizer, state in zip(trainer.optimizers, self.states, strict=True):
            optimizer.load_state_dict(state)


class LightningRunner:
    """A ``TaskRunner`` over a ``LightningModule``.

    ``datamodule`` is a ``LightningDataModule`` (data the site loads itself), a factory
    ``(shard, batch_size) -> LightningDataModule``, or ``None`` for plain batches of the
    shard's arrays. Metrics are what the module logs: train tasks report
    ``trainer.callback_metrics``, validate tasks what ``validation_step`` logs.
    """

    def __init__(
        self,
        module: pl.LightningModule,
        datamodule: pl.LightningDataModule | DataModuleFactory | None = None,
        *,
        batch_size: int = 32,
        federate: str | Sequence[str] = ("*",),
        keep_local: str | Sequence[str] = (),
        local_buffers: bool = False,
        optimizer_state: str = "reset",
        device: str = "auto",
        threads: int | None = None,
        seed: int = 0,
        trainer_args: dict[str, Any] | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.module = module
        self.datamodule = datamodule
        self.batch_size = int(batch_size)
        selection = TensorSelection.from_args(federate, keep_local, local_buffers)
        self.state = ModuleState(module, selection)
        self.optimizer_state = optimizer_state_policy(optimizer_state)
        self.device = resolve_device(device)
        self.trainer_args = dict(trainer_args or {})
        self._seed = int(seed)
        self._tasks = 0
        self._saved_optimizers: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        return self.state.read()

    def set_weights(self, weights: Weights) -> None:
        self.state.write(weights)

    # ------------------------------------------------------------------ tasks

    def train(
        self,
        data: DataShard,
        epochs: int = 1,
        max_steps: int = -1,
        batch_size: int | None = None,
        **_: Any,
    ) -> TaskResult:
        """``epochs`` local epochs (or ``max_steps`` optimizer steps) by Lightning's Trainer."""
        callbacks: list[pl.Callback] = []
        if self.optimizer_state == "keep" and self._saved_optimizers is not None:
            callbacks.append(_RestoreOptimizers(self._saved_optimizers))
        trainer = self._trainer(
            max_epochs=int(epochs), max_steps=int(max_steps), callbacks=callbacks
        )
        source = self._source(data, batch_size, train=True)
        with _quiet():
            if isinstance(source, pl.LightningDataModule):
                trainer.fit(self.module, datamodule=source)
            else:
                trainer.fit(self.module, train_dataloaders=source)
        if self.optimizer_state == "keep":
            self._saved_optimizers = [o.state_dict() for o in trainer.optimizers]
        metrics = _scalars(trainer.callback_metrics)
        if any(not np.isfinite(v) for v in metrics.values()):
            raise BastionError("training diverged (a logged metric is not finite); lower the lr")
        count = _dataset_size(trainer.train_dataloader, data.train_count)
        return TaskResult(count, metrics)

    def validate(self, data: DataShard, batch_size: int | None = None, **_: Any) -> TaskResult:
        trainer = self._trainer()
        source = self._source(data, batch_size, train=False)
        with _quiet():
            if isinstance(source, pl.LightningDataModule):
                results = trainer.validate(self.module, datamodule=source, verbose=False)
            else:
                results = trainer.validate(self.module, dataloaders=source, verbose=False)
        metrics: dict[str, float] = {}
        for result in results:
            metrics.update(_scalars(result))
        if not metrics:
            raise BastionError(
                f"{type(self.module).__name__}.validation_step logged no metrics; "
                "call self.log('accuracy', ...) there so the federation can track it"
            )
        loaders = trainer.val_dataloaders
        first = loaders[0] if isinstance(loaders, list | tuple) else loaders
        return TaskResult(_dataset_size(first, data.valid_count), metrics)

    # ------------------------------------------------------------------ helpers

    def _trainer(self, **task_args: Any) -> pl.Trainer:
        cuda = self.device.type == "cuda"
        args: dict[str, Any] = {
            "accelerator": "gpu" if cuda else "cpu",
            "devices": [self.device.index or 0] if cuda else 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **self.trainer_args,
            **task_args,
        }
        if "callbacks" in self.trainer_args and "callbacks" in task_args:
            args["callbacks"] = list(self.trainer_args["callbacks"]) + list(task_args["callbacks"])
        return pl.Trainer(**args)

    def _source(
        self, data: DataShard, batch_size: int | None, train: bool
    ) -> pl.LightningDataModule | DataLoader[Any]:
        size = int(batch_size or self.batch_size)
        if isinstance(self.datamodule, pl.LightningDataModule):
            return self.datamodule
        if self.datamodule is not None:
            return self.datamodule(data, size)
        self._tasks += 1
        x, y = (data.x_train, data.y_train) if train else (data.x_valid, data.y_valid)
        dataset = TensorDataset(
            torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long()
        )
        generator = torch.Generator().manual_seed(self._seed * 100_003 + self._tasks)
        return DataLoader(dataset, batch_size=size, shuffle=train, generator=generator)


def _scalars(metrics: Any) -> dict[str, float]:
    """Single-number metrics as floats; Lightning hands them over as 0-d tensors."""
    out: dict[str, float] = {}
    for name, value in dict(metrics).items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, int | float):
            out[str(name)] = float(value)
    return out


def _dataset_size(loader: Any, fallback: int) -> int:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else fallback
    except TypeError:  # an iterable dataset has no length
        return fallback


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide Lightning's advice to use more DataLoader workers: a collaborator's data is in memory."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        yield
