"""Errors raised while aggregating a round."""

from __future__ import annotations

from bastion.errors import BastionError


class AggregationError(BastionError):
    """A round cannot be aggregated as configured, or checkpointed strategy state does not fit."""
