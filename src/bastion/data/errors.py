"""Errors of the data layer: a dataset that cannot be found, read, or split as asked."""

from __future__ import annotations

from bastion.errors import BastionError


class DataError(BastionError):
    """A dataset is missing, malformed, or was asked for with invalid arguments."""


class PartitionError(DataError):
    """A dataset cannot be split across collaborators as asked (e.g. more parts than examples)."""
