"""The argument model of strategies that take no ``aggregation.args``.

``STRATEGY_ARGS_CONFIG`` (strict, no unknown keys) lives in ``bastion.spec.strategy_args``
so that argument models in the plan's schemas share it.
"""

from __future__ import annotations

from pydantic import BaseModel

from bastion.spec.strategy_args import STRATEGY_ARGS_CONFIG


class NoArgs(BaseModel):
    """Arguments of a strategy that takes none."""

    model_config = STRATEGY_ARGS_CONFIG
