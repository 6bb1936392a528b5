"""The MXNet adapter (legacy): a Gluon ``Block`` trained with ``gluon.Trainer``.

Apache retired MXNet in 2023; its last release, 1.9.1, still installs and runs with
NumPy below 1.24 (``pip install 'bastion-fl[mxnet]'`` pins both), so existing Gluon
models can join a federation while they are ported. New work should use Keras 3
(``bastion.runners.keras``) or PyTorch (``bastion.runners.torch``/``lightning``):
Gluon's layers map one to one onto ``keras.layers`` and ``torch.nn``.
Names are Gluon's structural ones (``0.weight``, ``1.running_mean``), the names
``save_parameters`` uses, not the per-process ``dense0_weight`` prefixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency
from bastion.runners.base import TaskResult
from bastion.runners.checks import check_incoming
from bastion.runners.options import TensorSelection, optimizer_state_policy
from bastion.tensors import Weights

try:
    import mxnet as mx
    from mxnet import autograd, gluon
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without mxnet
    raise MissingDependency("mxnet", "mxnet", "the MXNet task runner") from exc

#: dtypes Gluon keeps parameters in (MXNet 1.9 has no bfloat16 outside oneDNN's AMP); its
#: CPU build runs float16 dense layers only with cuDNN, i.e. on a GPU.
DTYPES = ("float16", "float32", "float64")


def resolve_context(device: str) -> mx.Context:
    """``auto`` is the first GPU when MXNet was built with CUDA and sees one, else the CPU."""
    if device == "auto":
        return mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return mx.cpu()
    if kind in ("cuda", "gpu"):
        return mx.gpu(int(index or 0))
    raise BastionError(f"task_runner.args.device: {device!r} is not auto, cpu or cuda[:N]")


class MxnetRunner:
    """A ``TaskRunner`` over an initialized Gluon ``Block``.

    ``input_shape`` runs one forward pass so deferred-shape parameters get their shapes.
    Parameters with ``grad_req='null'`` (BatchNorm's running statistics) are the buffers
    ``local_buffers`` keeps on the site. ``optimizer_state: reset`` builds a fresh
    ``gluon.Trainer`` each round; ``keep`` reuses it and its momentum.
    """

    def __init__(
        self,
        block: gluon.Block,
        input_shape: Sequence[int] | None = None,
        *,
        optimizer: str = "sgd",
        optimizer_args: dict[str, Any] | None = None,
        federate: str | Sequence[str] = ("*",),
        keep_local: str | Sequence[str] = (),
        local_buffers: bool = False,
        optimizer_state: str = "reset",
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.context = resolve_context(device)
        self.block = block
        block.collect_params().reset_ctx(self.context)
        if input_shape is not None:
            block(mx.nd.zeros(tuple(input_shape), ctx=self.context, dtype=self._dtype()))
        # Structural names, as Block.save_parameters writes them.
        self._params = dict(block._collect_params_with_prefix())
        unset = [n for n, p in self._params.items() if not p.shape or 0 in p.shape]
        if unset:
            raise BastionError(
                f"parameters {unset[:3]} have no shape yet: pass input_shape=(1, features) "
                "so one forward pass sizes them"
            )
        selection = TensorSelection.from_args(federate, keep_local, local_buffers)
        buffers = [n for n, p in self._params.items() if p.grad_req == "null"]
        self.names = selection.choose(list(self._params), buffers)
        self.shapes = {n: tuple(self._params[n].shape) for n in self.names}
        self.optimizer = optimizer
        self.optimizer_args = {"learning_rate": 0.1, **(optimizer_args or {})}
        self.optimizer_state = optimizer_state_policy(optimizer_state)
        self._trainer: gluon.Trainer | None = None
        self._rng = np.random.default_rng(seed)
        self._loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def _dtype(self) -> str:
        first = next(iter(self.block.collect_params().values()))
        return str(np.dtype(first.dtype).name)

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        return {name: self._params[name].data(self.context).asnumpy().copy() for name in self.names}

    def set_weights(self, weights: Weights) -> None:
        check_incoming(weights, self.shapes)
        for name in self.names:
            parameter = self._params[name]
            value = np.asarray(weights[name], dtype=parameter.dtype)
            parameter.set_data(mx.nd.array(value, ctx=self.context, dtype=parameter.dtype))

    # ------------------------------------------------------------------ tasks

    def train(self, data: DataShard, epochs: int = 1, batch_size: int = 32, **_: Any) -> TaskResult:
        """Local epochs of mini-batch training under ``autograd.record``."""
        if self._trainer is None or self.optimizer_state == "reset":
            self._trainer = gluon.Trainer(
                self.block.collect_params(), self.optimizer, dict(self.optimizer_args)
            )
        dtype = self._dtype()
        total_loss, correct, seen = 0.0, 0, 0
        for _epoch in range(int(epochs)):
            order = self._rng.permutation(data.train_count)
            for start in range(0, len(order), int(batch_size)):
                index = order[start : start + int(batch_size)]
                x = mx.nd.array(data.x_train[index], ctx=self.context, dtype=dtype)
                y = mx.nd.array(data.y_train[index], ctx=self.context, dtype=dtype)
                with autograd.record():
                    logits = self.block(x)
                    loss = self._loss(logits, y)
                loss.backward()
                self._trainer.step(len(index))
                total_loss += float(loss.sum().asscalar())
                correct += int((logits.argmax(axis=1) == y).sum().asscalar())
                seen += len(index)
        if seen and not math.isfinite(total_loss):
            raise BastionError("training diverged (loss is not finite); lower the learning rate")
        metrics = {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}
        return TaskResult(data.train_count, metrics)

    def validate(self, data: DataShard, batch_size: int = 512, **_: Any) -> TaskResult:
        dtype = self._dtype()
        total_loss, correct = 0.0, 0
        for start in range(0, data.valid_count, int(batch_size)):
            stop = start + int(batch_size)
            x = mx.nd.array(data.x_valid[start:stop], ctx=self.context, dtype=dtype)
            y = mx.nd.array(data.y_valid[start:stop], ctx=self.context, dtype=dtype)
            logits = self.block(x)
            total_loss += float(self._loss(logits, y).sum().asscalar())
            correct += int((logits.argmax(axis=1) == y).sum().asscalar())
        count = data.valid_count
        metrics = {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}
        return TaskResult(count, metrics)
