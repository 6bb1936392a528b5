"""Pydantic settings shared by every strategy's argument model (``aggregation.args``).

Strict: a string where a number belongs, an unknown key, NaN or infinity are refused
rather than coerced, so a typo in ``plan.yaml`` fails at load time.
"""

from __future__ import annotations

from pydantic import ConfigDict

STRATEGY_ARGS_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
