"""Softmax regression in NumPy on tabular features: the model this workspace federates."""

from __future__ import annotations

import numpy as np

from bastion.runners.numpy import NumpyRunner


class SoftmaxRegression:
    """Multinomial logistic regression trained with mini-batch SGD on standardized features."""

    def __init__(self, num_features: int, num_classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((num_features, num_classes)) * 0.01).astype(np.float32)
        self.b = np.zeros(num_classes, dtype=np.float32)
        self._rng = rng

    def get_weights(self) -> dict[str, np.ndarray]:
        return {"w": self.w, "b": self.b}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.w, self.b = weights["w"].astype(np.float32), weights["b"].astype(np.float32)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.w + self.b
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def fit(
        self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 16, lr: float = 0.1
    ) -> dict[str, float]:
        onehot = np.eye(self.w.shape[1], dtype=np.float32)[y]
        for _ in range(int(epochs)):
            order = self._rng.permutation(len(y))
            for start in range(0, len(y), int(batch_size)):
                index = order[start : start + int(batch_size)]
                error = self._probabilities(x[index]) - onehot[index]
                self.w -= lr * (x[index].T @ error) / len(index)
                self.b -= lr * error.mean(axis=0)
        return self.evaluate(x, y)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        probabilities = self._probabilities(x)
        loss = -np.log(probabilities[np.arange(len(y)), y] + 1e-12).mean()
        accuracy = (probabilities.argmax(axis=1) == y).mean()
        return {"loss": float(loss), "accuracy": float(accuracy)}


def build_runner(num_features: int = 64, num_classes: int = 10, seed: int = 0) -> NumpyRunner:
    return NumpyRunner(SoftmaxRegression(num_features, num_classes, seed=seed))
