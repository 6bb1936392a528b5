"""Errors raised by secure aggregation and differential privacy."""

from __future__ import annotations

from bastion.errors import BastionError


class SecAggError(BastionError):
    """Secure aggregation was configured or driven wrongly."""


class SecAggAborted(SecAggError):
    """The secure aggregation round cannot finish safely; nothing was or will be unmasked."""


class KeySubstitutionDetected(SecAggAborted):
    """A peer's advertised keys do not carry a valid signature from its identity key."""


class QuantizationOverflow(SecAggError):
    """The sum of the quantized inputs could wrap around the modulus."""


class PrivacyBudgetExceeded(BastionError):
    """One more round would spend more differential privacy budget than the plan allows."""
