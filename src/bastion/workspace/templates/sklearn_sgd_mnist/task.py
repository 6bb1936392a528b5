"""Logistic regression on MNIST pixels: the model this workspace federates."""

from __future__ import annotations

from sklearn.linear_model import SGDClassifier

from bastion.runners.sklearn import SklearnRunner

NUM_FEATURES = 28 * 28
CLASSES = list(range(10))


def build_runner(
    seed: int = 0, alpha: float = 1e-4, optimizer_state: str = "reset"
) -> SklearnRunner:
    model = SGDClassifier(loss="log_loss", alpha=alpha, random_state=seed)
    return SklearnRunner(
        model,
        classes=CLASSES,
        num_features=NUM_FEATURES,
        dtype="float32",
        optimizer_state=optimizer_state,
    )
