"""Local DP-SGD on a collaborator through Opacus (Abadi et al. 2016, "Deep Learning with
Differential Privacy"): per-example gradient clipping and Gaussian noise on every step.

Torch and Opacus are imported only when called, so ``import bastion`` needs neither.
Opacus draws its noise from torch's generator unless ``secure_mode=True``, which needs
the ``torchcsprng`` package; we pass the flag through and say so when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bastion.errors import BastionError, MissingDependency

_PURPOSE = "local differential privacy (DP-SGD)"


@dataclass
class PrivateTraining:
    """The Opacus-wrapped model, optimizer and data loader, and the engine that accounts them."""

    model: Any
    optimizer: Any
    data_loader: Any
    engine: Any

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far by this collaborator's training, at ``delta``."""
        return float(self.engine.get_epsilon(delta))


def make_private(
    model: Any,
    optimizer: Any,
    data_loader: Any,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool = True,
    secure_mode: bool = False,
    accountant: str = "rdp",
) -> PrivateTraining:
    """Wrap a torch model, optimizer and data loader with Opacus's ``PrivacyEngine``."""
    try:
        from opacus import PrivacyEngine
    except ImportError:
        raise MissingDependency("opacus", "opacus", _PURPOSE) from None
    if not noise_multiplier > 0:
        raise BastionError(f"noise_multiplier must be positive for DP-SGD, got {noise_multiplier}")
    if not max_grad_norm > 0:
        raise BastionError(f"max_grad_norm must be positive for DP-SGD, got {max_grad_norm}")
    try:
        engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
    except ImportError:
        raise BastionError(
            "secure_mode=True needs the 'torchcsprng' package for cryptographically secure "
            "noise; install it or run with secure_mode=False"
        ) from None
    model, optimizer, data_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=poisson_sampling,
    )
    return PrivateTraining(model, optimizer, data_loader, engine)
