"""The Keras 3 adapter: a compiled ``keras.Model`` trained by its own ``fit``.

Keras 3 runs on several backends; Bastion selects the torch backend unless
``KERAS_BACKEND`` says otherwise, so TensorFlow is not needed (the tensorflow and jax
backends work the same when installed). Tensor names are structural
(``<layer index>.<layer class>.<variable path in the layer>``, e.g. ``2.dense.kernel``)
because Keras's own names carry per-process counters (``dense_3``) that differ between
the process that made the initial model and each collaborator.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency
from bastion.runners.base import TaskResult
from bastion.runners.checks import check_incoming
from bastion.runners.options import TensorSelection, optimizer_state_policy
from bastion.runners.wire_dtypes import to_wire
from bastion.tensors import Weights

os.environ.setdefault("KERAS_BACKEND", "torch")

try:
    import keras
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without keras
    raise MissingDependency("keras", "keras", "the Keras task runner") from exc


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def structural_names(model: keras.Model) -> dict[str, Any]:
    """The model's variables by structural name, in ``model.weights`` order."""
    owners: dict[int, tuple[int, Any]] = {}
    for index, layer in enumerate(model.layers):
        for variable in layer.weights:
            owners.setdefault(id(variable), (index, layer))
    named: dict[str, Any] = {}
    for variable in model.weights:
        owner = owners.get(id(variable))
        if owner is None:
            name = f"model.{variable.path.replace('/', '.')}"
        else:
            index, layer = owner
            tail = variable.path.removeprefix(layer.path + "/")
            name = f"{index}.{_snake(type(layer).__name__)}.{tail.replace('/', '.')}"
        if name in named:
            raise BastionError(
                f"two Keras variables map to the name {name!r}; give the sublayers of "
                f"{type(model).__name__} distinct names"
            )
        named[name] = variable
    return named


class KerasRunner:
    """A ``TaskRunner`` over a built and compiled ``keras.Model``.

    Non-trainable variables (BatchNormalization's moving statistics) are the buffers
    ``local_buffers`` keeps on the site. ``optimizer_state: reset`` restores the
    optimizer's variables (moments, iteration count) to their initial values before
    every round; ``keep`` lets them carry over. Device placement is the backend's
    (the torch backend uses CUDA when it is available).
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        federate: str | Sequence[str] = ("*",),
        keep_local: str | Sequence[str] = (),
        local_buffers: bool = False,
        optimizer_state: str = "reset",
        threads: int | None = None,
    ) -> None:
        if not model.built or not model.weights:
            raise BastionError(
                f"{type(model).__name__} has no weights yet: start it with keras.Input(shape) "
                "or call model.build(input_shape) before handing it to KerasRunner"
            )
        if getattr(model, "optimizer", None) is None:
            raise BastionError("the Keras model is not compiled: call model.compile(...) first")
        if threads and keras.backend.backend() == "torch":
            import torch

            torch.set_num_threads(int(threads))
        self.model = model
        self._variables = structural_names(model)
        selection = TensorSelection.from_args(federate, keep_local, local_buffers)
        buffers = [n for n, v in self._variables.items() if not v.trainable]
        self.names = selection.choose(list(self._variables), buffers)
        self.shapes = {n: tuple(self._variables[n].shape) for n in self.names}
        self.optimizer_state = optimizer_state_policy(optimizer_state)
        model.optimizer.build(model.trainable_variables)
        self._initial_optimizer = [
            np.array(keras.ops.convert_to_numpy(v.value), copy=True)
            for v in model.optimizer.variables
        ]

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        return {
            name: to_wire(name, np.array(keras.ops.convert_to_numpy(self._variables[name].value)))
            for name in self.names
        }

    def set_weights(self, weights: Weights) -> None:
        check_incoming(weights, self.shapes)
        for name in self.names:
            # Keras casts to the variable's dtype: float32 back to bfloat16 is exact here.
            self._variables[name].assign(np.asarray(weights[name]))

    # ------------------------------------------------------------------ tasks

    def train(
        self,
        data: DataShard,
        epochs: int = 1,
        batch_size: int = 32,
        **_: Any,
    ) -> TaskResult:
        """``model.fit`` for ``epochs`` local epochs; metrics are the last epoch's."""
        if self.optimizer_state == "reset":
            for variable, initial in zip(
                self.model.optimizer.variables, self._initial_optimizer, strict=True
            ):
                variable.assign(initial)
        history = self.model.fit(
            data.x_train,
            data.y_train,
            epochs=int(epochs),
            batch_size=int(batch_size),
            shuffle=True,
            verbose=0,
        )
        metrics = {name: float(values[-1]) for name, values in history.history.items() if values}
        if any(not np.isfinite(v) for v in metrics.values()):
            raise BastionError("training diverged (loss is not finite); lower the learning rate")
        return TaskResult(data.train_count, metrics)

    def validate(self, data: DataShard, batch_size: int = 256, **_: Any) -> TaskResult:
        results = self.model.evaluate(
            data.x_valid, data.y_valid, batch_size=int(batch_size), verbose=0, return_dict=True
        )
        return TaskResult(data.valid_count, {k: float(v) for k, v in results.items()})
