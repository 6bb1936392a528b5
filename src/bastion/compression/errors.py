"""Errors of update compression."""

from __future__ import annotations

from bastion.errors import BastionError


class CompressionError(BastionError):
    """A compression stage was configured wrongly or cannot encode a value."""


class IncompatibleCompression(CompressionError):
    """Stages that cannot compose, with each other or with secure aggregation."""
