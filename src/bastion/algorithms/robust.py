"""Shared machinery of the robust rules that need every update of a round at once.

Median, trimmed mean and (Multi-)Krum spill each update to a per-round file in a
private temporary directory and read it back a block of columns at a time. They
ignore the example counts collaborators report: a count is self-declared, so
weighting by it would let one attacker claim a huge count and dominate the very rule
meant to resist it.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from abc import abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from bastion.algorithms.args import STRATEGY_ARGS_CONFIG
from bastion.algorithms.base import Strategy, cast_like
from bastion.algorithms.errors import AggregationError
from bastion.algorithms.spill import SpillFile, row_layout, spill_dtype_for, unflatten
from bastion.tensors import Weights


class SpillArgs(BaseModel):
    """Where and how updates are spilled to disk."""

    model_config = STRATEGY_ARGS_CONFIG

    spill_dir: str | None = Field(
        default=None, description="directory for spill files; the system temp directory when unset"
    )
    spill_dtype: Literal["auto", "float32", "float64"] = Field(
        default="auto",
        description="row dtype on disk; 'auto' is float32 unless a tensor needs float64 "
        "(float64 or int32/int64 tensors); float32 halves the disk but rounds such tensors",
    )
    block_mib: int = Field(
        default=64, ge=1, le=65536, description="MiB of float64 working memory per column block"
    )


class SpillingStrategy(Strategy):
    """A rule computed over all of a round's updates, kept on disk rather than in RAM."""

    def __init__(self, spill: SpillArgs) -> None:
        self._spill_args = spill
        self._directory: Path | None = None
        self._remove_directory: weakref.finalize | None = None
        self._spill: SpillFile | None = None
        self._global: Weights = {}
        self._collaborators: list[str] = []

    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        self._discard_spill()
        self._global = global_weights
        self._collaborators = []
        dtype = (
            spill_dtype_for(global_weights)
            if self._spill_args.spill_dtype == "auto"
            else np.dtype(self._spill_args.spill_dtype)
        )
        path = self._spill_directory() / f"round-{round_number:06d}.{dtype.name}"
        self._spill = SpillFile(path, row_layout(global_weights), dtype)

    def accumulate(self, collaborator: str, update: Weights, weight: float) -> None:
        self._current_spill().append(update)
        self._collaborators.append(collaborator)

    @property
    def accepted(self) -> int:
        return len(self._collaborators)

    def finalize(self) -> Weights:
        spill = self._current_spill()
        if spill.count == 0:
            raise AggregationError(f"{self.name}: finalize() called before any result arrived")
        try:
            flat = self.aggregate_rows(spill.rows())
        finally:
            self._discard_spill()
        return cast_like(unflatten(flat, spill.layout), self._global)

    @abstractmethod
    def aggregate_rows(self, rows: np.ndarray) -> np.ndarray:
        """The new global model as one float64 row, from ``rows`` (one update per row)."""

    @property
    def collaborators(self) -> list[str]:
        """Who sent each row of this round, in arrival order."""
        return list(self._collaborators)

    @property
    def block_bytes(self) -> int:
        return self._spill_args.block_mib * 2**20

    @property
    def spill_path(self) -> Path | None:
        """The current round's spill file, or None between rounds."""
        return self._spill.path if self._spill is not None else None

    def close(self) -> None:
        self._discard_spill()
        if self._remove_directory is not None:
            self._remove_directory()
            self._remove_directory = None
            self._directory = None

    def _current_spill(self) -> SpillFile:
        if self._spill is None:
            raise AggregationError(f"{self.name}: begin_round() must be called first")
        return self._spill

    def _discard_spill(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def _spill_directory(self) -> Path:
        """A private (mode 0700) directory, created on first use and removed by ``close()``."""
        if self._directory is None:
            parent = self._spill_args.spill_dir
            try:
                directory = Path(tempfile.mkdtemp(prefix="bastion-spill-", dir=parent))
            except OSError as exc:
                raise AggregationError(
                    f"aggregation.args.spill_dir: cannot create a spill directory in "
                    f"{parent!r} ({exc.strerror}); point it at an existing writable directory"
                ) from None
            self._directory = directory
            # Removes the directory even if close() is never called.
            self._remove_directory = weakref.finalize(
                self, shutil.rmtree, str(directory), ignore_errors=True
            )
        return self._directory
