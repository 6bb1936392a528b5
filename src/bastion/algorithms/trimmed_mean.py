"""Coordinate-wise β-trimmed mean.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", Definition 2: for each coordinate, drop the ⌊βn⌋ largest and ⌊βn⌋ smallest of
the n values and average the rest. Choose β at least the fraction of collaborators
you want to withstand. Example counts are ignored (see ``bastion.algorithms.robust``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from pydantic import Field

from bastion.algorithms.errors import AggregationError
from bastion.algorithms.robust import SpillArgs, SpillingStrategy
from bastion.algorithms.spill import column_blocks


class TrimmedMeanArgs(SpillArgs):
    beta: float = Field(
        default=0.1, ge=0.0, lt=0.5, description="fraction trimmed from each end, 0 <= beta < 0.5"
    )


def trim_count(beta: float, count: int) -> int:
    """⌊β·n⌋, taking β as written in decimal (0.29 × 100 is 29, not 28.999...)."""
    return math.floor(Fraction(repr(beta)) * count)


class TrimmedMean(SpillingStrategy):
    """Coordinate-wise mean after trimming ⌊βn⌋ values from each end."""

    name = "trimmed_mean"

    def __init__(self, args: TrimmedMeanArgs | None = None) -> None:
        self.args = args or TrimmedMeanArgs()
        super().__init__(self.args)

    def aggregate_rows(self, rows: np.ndarray) -> np.ndarray:
        count = rows.shape[0]
        trim = trim_count(self.args.beta, count)
        if 2 * trim >= count:
            raise AggregationError(
                f"trimmed_mean with beta={self.args.beta} trims {trim} values from each end "
                f"of {count} updates, leaving none (need 2*floor(beta*n) < n); "
                "lower aggregation.args.beta"
            )
        result = np.empty(rows.shape[1], dtype=np.float64)
        for columns, block in column_blocks(rows, self.block_bytes):
            block.sort(axis=0)
            result[columns] = block[trim : count - trim].mean(axis=0)
        return result
