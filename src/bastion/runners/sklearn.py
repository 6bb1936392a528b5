"""The scikit-learn adapter: linear classifiers trained with ``partial_fit``.

A linear model is its ``coef_`` and ``intercept_``, so those two arrays are what
federates (SGDClassifier, Perceptron, PassiveAggressiveClassifier). scikit-learn is a
core dependency of Bastion: no extra is needed. Runs on the CPU; scikit-learn has no GPU.
"""

from __future__ import annotations

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
    from sklearn.metrics import log_loss
except ModuleNotFoundError as exc:  # pragma: no cover - scikit-learn is a core dependency
    raise MissingDependency("scikit-learn", "sklearn", "the scikit-learn task runner") from exc

PARAMETERS = ("coef_", "intercept_")
DTYPES = (np.float32, np.float64)


class SklearnRunner:
    """A ``TaskRunner`` over a linear classifier with ``partial_fit``.

    The model's parameters are allocated at construction from ``classes`` and
    ``num_features`` and start at zero (the convex problem needs no random start), so
    every site and the initial checkpoint agree. ``optimizer_state: reset`` restarts the
    learning-rate schedule (``t_``) every round; ``keep`` continues it locally.
    """

    def __init__(
        self,
        model: Any,
        classes: Sequence[int],
        num_features: int,
        *,
        dtype: str = "float64",
        federate: str | Sequence[str] = ("*",),
        keep_local: str | Sequence[str] = (),
        optimizer_state: str = "reset",
    ) -> None:
        if not hasattr(model, "partial_fit"):
            raise BastionError(
                f"{type(model).__name__} has no partial_fit; use a linear model that learns "
                "incrementally, such as sklearn.linear_model.SGDClassifier"
            )
        if getattr(model, "average", False):
            raise BastionError(
                "SGDClassifier(average=...) keeps a second, averaged copy of the weights that "
                "federated averaging would not see; use average=False"
            )
        if np.dtype(dtype) not in DTYPES:
            raise BastionError(f"dtype {dtype!r}: scikit-learn's SGD trains in float32 or float64")
        self.model: Any = model  # duck-typed: partial_fit, coef_, intercept_, t_
        self.classes = np.asarray(classes)
        self.optimizer_state = optimizer_state_policy(optimizer_state)
        self._allocate(int(num_features), np.dtype(dtype))
        selection = TensorSelection.from_args(federate, keep_local)
        self.names = selection.choose(PARAMETERS)
        self.shapes = {name: getattr(model, name).shape for name in self.names}

    def _allocate(self, num_features: int, dtype: np.dtype) -> None:
        """Let partial_fit size the parameters on one example, then zero them and the schedule."""
        probe = np.zeros((1, num_features), dtype=dtype)
        self.model.partial_fit(probe, self.classes[:1], classes=self.classes)
        self.model.coef_ = np.zeros_like(self.model.coef_)
        self.model.intercept_ = np.zeros_like(self.model.intercept_)
        self.model.t_ = 1.0
        self._dtype = dtype

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        return {name: np.array(getattr(self.model, name), copy=True) for name in self.names}

    def set_weights(self, weights: Weights) -> None:
        check_incoming(weights, self.shapes)
        for name in self.names:
            current = getattr(self.model, name)
            value = np.array(weights[name], dtype=current.dtype, order="C", copy=True)
            setattr(self.model, name, value)

    # ------------------------------------------------------------------ tasks

    def train(self, data: DataShard, epochs: int = 1, **_: Any) -> TaskResult:
        """``epochs`` passes of ``partial_fit`` over the shard (SGD shuffles within each)."""
        if self.optimizer_state == "reset":
            self.model.t_ = 1.0
        x = self._features(data.x_train)
        for _epoch in range(int(epochs)):
            self.model.partial_fit(x, data.y_train)
        if not all(np.isfinite(getattr(self.model, n)).all() for n in PARAMETERS):
            raise BastionError("training diverged (weights are not finite); lower eta0 or alpha")
        return TaskResult(data.train_count, self._metrics(x, data.y_train))

    def validate(self, data: DataShard, **_: Any) -> TaskResult:
        x = self._features(data.x_valid)
        return TaskResult(data.valid_count, self._metrics(x, data.y_valid))

    def _features(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(len(x), -1), dtype=self._dtype)

    def _metrics(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        metrics = {"accuracy": float(self.model.score(x, y))}
        if getattr(self.model, "loss", None) == "log_loss":
            probabilities = self.model.predict_proba(x)
            metrics["loss"] = float(log_loss(y, probabilities, labels=self.classes))
        return metrics
