"""Krum and Multi-Krum.

Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", §4 and §6: with n updates of which up to f are Byzantine (n > 2f + 2), the
score of update i is the sum of squared distances to its n − f − 2 nearest other
updates; Krum returns the update with the lowest score, Multi-Krum the plain average
of the m lowest-scored ones. Example counts are ignored (see
``bastion.algorithms.robust``); ties in score go to the earlier arrival.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from bastion.algorithms.errors import AggregationError
from bastion.algorithms.robust import SpillArgs, SpillingStrategy
from bastion.algorithms.spill import column_blocks


class KrumArgs(SpillArgs):
    f: int = Field(ge=0, description="Byzantine collaborators to tolerate; needs n > 2f + 2")
    m: int = Field(
        default=1, ge=1, description="updates Multi-Krum averages, 1 <= m <= n - f; 1 is plain Krum"
    )


def pairwise_squared_distances(rows: np.ndarray, block_bytes: int) -> np.ndarray:
    """The n × n matrix of squared L2 distances between rows, a block of columns at a time.

    Each block is centred on its column means before its Gram matrix is taken, which
    keeps the ``|a|² + |b|² − 2a·b`` form from cancelling catastrophically.
    """
    count = rows.shape[0]
    distances = np.zeros((count, count), dtype=np.float64)
    for _, block in column_blocks(rows, block_bytes):
        block -= block.mean(axis=0)
        gram = block @ block.T
        norms = np.diag(gram)
        distances += norms[:, None] + norms[None, :] - 2.0 * gram
    distances = np.maximum((distances + distances.T) / 2.0, 0.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def krum_scores(distances: np.ndarray, neighbours: int) -> np.ndarray:
    """Each row's sum of squared distances to its ``neighbours`` nearest other rows."""
    others = distances.copy()
    np.fill_diagonal(others, np.inf)
    return np.sort(others, axis=1)[:, :neighbours].sum(axis=1)


class Krum(SpillingStrategy):
    """Krum (m = 1) or Multi-Krum (m > 1) over all of a round's updates."""

    name = "krum"

    def __init__(self, args: KrumArgs) -> None:
        self.args = args
        super().__init__(args)
        self._selected: list[str] = []

    @property
    def selected(self) -> list[str]:
        """The collaborators whose updates the last ``finalize()`` averaged, best first."""
        return list(self._selected)

    def aggregate_rows(self, rows: np.ndarray) -> np.ndarray:
        count, f, m = rows.shape[0], self.args.f, self.args.m
        if count <= 2 * f + 2:
            raise AggregationError(
                f"krum with f={f} needs more than 2f+2={2 * f + 2} updates, got {count}; "
                "lower aggregation.args.f or require more results per round"
            )
        if m > count - f:
            raise AggregationError(
                f"multi-krum with m={m} would average more than the n-f={count - f} updates "
                f"({count} received, f={f}) that can be trusted; lower aggregation.args.m"
            )
        scores = krum_scores(pairwise_squared_distances(rows, self.block_bytes), count - f - 2)
        chosen = np.argsort(scores, kind="stable")[:m]
        names = self.collaborators
        self._selected = [names[i] for i in chosen]
        result = np.empty(rows.shape[1], dtype=np.float64)
        for columns, block in column_blocks(rows, self.block_bytes, row_index=chosen):
            result[columns] = block.mean(axis=0)
        return result
