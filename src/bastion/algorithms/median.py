"""Coordinate-wise median.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", Eq. (3): each coordinate of the new model is the median of that coordinate
over the round's updates (the mean of the two middle values for an even count).
Example counts are ignored: they are self-reported, so an attacker could inflate
them (see ``bastion.algorithms.robust``).
"""

from __future__ import annotations

import numpy as np

from bastion.algorithms.robust import SpillArgs, SpillingStrategy
from bastion.algorithms.spill import column_blocks


class MedianArgs(SpillArgs):
    """The median takes only the spill settings."""


class Median(SpillingStrategy):
    """Coordinate-wise median of all updates, computed a block of columns at a time."""

    name = "median"

    def __init__(self, args: MedianArgs | None = None) -> None:
        super().__init__(args or MedianArgs())

    def aggregate_rows(self, rows: np.ndarray) -> np.ndarray:
        result = np.empty(rows.shape[1], dtype=np.float64)
        for columns, block in column_blocks(rows, self.block_bytes):
            result[columns] = np.median(block, axis=0)
        return result
