"""The in-memory data a collaborator trains on: plain NumPy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """A whole dataset before partitioning: a train split and a held-out test split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class DataShard:
    """One collaborator's part of a dataset: what it trains on and what it validates on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    num_classes: int

    @property
    def train_count(self) -> int:
        return int(len(self.y_train))

    @property
    def valid_count(self) -> int:
        return int(len(self.y_valid))
