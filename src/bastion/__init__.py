"""Bastion: secure federated learning.

`import bastion` needs NumPy alone; frameworks are imported only by their adapters.
"""

from typing import Any

from bastion.errors import BastionError

__version__ = "0.1.0"
__all__ = ["BastionError", "Federation", "Job", "__version__"]


def __getattr__(name: str) -> Any:
    """``bastion.Federation`` / ``bastion.Job``: the federation service's Python API (loaded
    on first use, so ``import bastion`` stays NumPy-only and quick)."""
    if name in ("Federation", "Job"):
        from bastion.director import api

        return getattr(api, name)
    raise AttributeError(f"module 'bastion' has no attribute {name!r}")
