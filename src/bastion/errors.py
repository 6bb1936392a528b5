"""Errors meant for users: each says what was wrong, where, and what to do."""

from __future__ import annotations


class BastionError(Exception):
    """Base of every error Bastion reports to a user as one line (CLI exit code 2)."""


class PlanError(BastionError):
    """The plan is invalid: the message names the key path and the fix."""


class PKIError(BastionError):
    """A certificate or key is missing, malformed, or not trusted."""


class UpdateRejected(BastionError):
    """A collaborator's result failed validation; the round goes on without it."""


class ProtocolError(BastionError):
    """A peer sent a malformed or out-of-order message."""


class MissingDependency(BastionError):
    """An optional framework is needed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs '{package}', which is not installed: "
            f"run `pip install 'bastion-fl[{extra}]'`"
        )
        self.package = package
        self.extra = extra
