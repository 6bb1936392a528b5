"""Checks on weights arriving at an adapter, shared by every framework."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bastion.errors import BastionError


def check_incoming(
    weights: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """Refuse weights that lack a federated tensor or whose shape differs from the model's."""
    missing = [name for name in shapes if name not in weights]
    if missing:
        raise BastionError(
            f"weights lack tensors {missing[:5]} of the model ({len(missing)} missing); "
            "was the checkpoint made with another model or another task_runner.args.federate?"
        )
    for name, shape in shapes.items():
        got = tuple(int(d) for d in np.shape(weights[name]))
        if got != tuple(shape):
            raise BastionError(f"tensor {name!r}: shape {got}, the model has {tuple(shape)}")
