"""Bastion: secure federated learning.

`import bastion` needs NumPy alone; frameworks are imported only by their adapters.
"""

from bastion.errors import BastionError

__version__ = "0.1.0"
__all__ = ["BastionError", "__version__"]
