"""Local DP-SGD on a collaborator through Opacus (Abadi et al. 2016, "Deep Learning with
Differential Privacy"): per-example gradient clipping and Gaussian noise on every step.

Torch and Opacus are imported only when called, so ``import bastion`` needs neither.
Opacus draws its noise from torch's generator unless ``secure_mode=True``, which needs
the ``torchcsprng`` package; we pass the flag through and say so when it is missing.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

from bastion.errors import BastionError, MissingDependency

_PURPOSE = "local differential privacy (DP-SGD)"

#: One accountant entry: (noise multiplier, sample rate, steps), as Opacus keeps them.
HistoryEntry = tuple[float, float, int]


def poisson_schedule(examples: int, batch_size: int) -> tuple[float, int]:
    """(sample rate, steps per epoch) Opacus accounts for one pass over ``examples``.

    Mirrors ``PrivacyEngine.make_private`` with Poisson sampling: the loader's
    ceil(n / batch_size) batches give rate 1/L; its sampler draws int(1 / (1/L)) batches
    and the accountant charges each at 1 / that count.
    """
    if examples < 1 or batch_size < 1:
        raise BastionError(
            f"DP-SGD needs at least one example and a batch size >= 1, got {examples} and "
            f"{batch_size}"
        )
    steps = int(1 / (1 / math.ceil(examples / batch_size)))
    return 1 / steps, steps


def round_steps(
    examples: int, epochs: int, batch_size: int, max_batches: int | None
) -> tuple[float, int]:
    """(sample rate, DP-SGD steps) of one training task: every Poisson batch counts, empty or not."""
    rate, per_epoch = poisson_schedule(examples, int(batch_size))
    steps = int(epochs) * per_epoch
    return rate, steps if max_batches is None else min(steps, max(int(max_batches), 0))


def check_history(entries: object) -> list[HistoryEntry]:
    """Accountant entries from a file or another process, checked; raises ``BastionError``."""
    if not isinstance(entries, list):
        raise BastionError("the accountant history must be a list of [z, q, steps] entries")
    checked: list[HistoryEntry] = []
    for entry in entries:
        if not (isinstance(entry, list | tuple) and len(entry) == 3):
            raise BastionError(f"accountant entry {entry!r} is not [z, q, steps]")
        z, q, steps = entry
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (z, q))
        if not (numbers and math.isfinite(z) and z > 0 and 0 < q <= 1):
            raise BastionError(
                f"accountant entry {list(entry)!r}: need a noise multiplier > 0 and a sample "
                "rate in (0, 1]"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise BastionError(
                f"accountant entry {list(entry)!r}: steps must be a whole number >= 1"
            )
        checked.append((float(z), float(q), int(steps)))
    return checked


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


class LocalDPTrainer:
    """One collaborator's DP-SGD over all its rounds: one Opacus engine, one accountant.

    Each round ``attach`` makes that round's optimizer and data loader private (Poisson
    batches of expected size ``batch_size``, per-example clipping, noise on every step)
    with hooks on the caller's own module, which ``detach`` removes, so the model keeps
    its parameter names. The accountant's history spans rounds, so ``epsilon`` is what
    this site's records have spent in the whole federation.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float,
        secure_mode: bool = False,
        accountant: str = "rdp",
    ) -> None:
        try:
            from opacus import PrivacyEngine
        except ImportError:
            raise MissingDependency("opacus", "opacus", _PURPOSE) from None
        if not noise_multiplier > 0:
            raise BastionError(
                f"noise_multiplier must be positive for DP-SGD, got {noise_multiplier}"
            )
        if not max_grad_norm > 0:
            raise BastionError(f"max_grad_norm must be positive for DP-SGD, got {max_grad_norm}")
        try:
            self.engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
        except ImportError:
            raise BastionError(
                "differential_privacy.local.secure_mode needs the 'torchcsprng' package for "
                "cryptographically secure noise; install it or set secure_mode: false"
            ) from None
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.delta = float(delta)

    def attach(self, model: Any, optimizer: Any, data_loader: Any) -> tuple[Any, Any, Any]:
        """(hooks, private optimizer, Poisson data loader) for one round on ``model``."""
        from opacus.validators import ModuleValidator

        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise BastionError(
                "differential_privacy.local: Opacus cannot train this model with per-example "
                f"gradients: {problems[0]}; replace BatchNorm with GroupNorm (see "
                "opacus.validators.ModuleValidator.fix)"
            )
        with warnings.catch_warnings():
            # Each round wraps a new loader over the same site data: one logical dataset.
            warnings.filterwarnings("ignore", message="PrivacyEngine detected new dataset")
            return self.engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=data_loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm,
                poisson_sampling=True,
                wrap_model=False,
            )

    def count_empty_step(self, sample_rate: float) -> None:
        """Account a Poisson batch that drew nobody: it was sampled, so it counts."""
        self.engine.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)

    @staticmethod
    def detach(hooks: Any) -> None:
        """Remove this round's hooks and per-example gradient attributes from the model."""
        hooks.cleanup()

    def epsilon(self) -> float:
        """Epsilon this site has spent at ``delta`` over every DP-SGD step so far."""
        if not len(self.engine.accountant):
            return 0.0
        return float(self.engine.get_epsilon(self.delta))

    def epsilon_after(self, sample_rate: float, steps: int) -> float:
        """Epsilon at ``delta`` once ``steps`` more DP-SGD steps at ``sample_rate`` are spent.

        The same accountant class over a copy of the history, stepped exactly as the
        optimizer hook and ``count_empty_step`` step it while training: the prediction is
        the epsilon training that round will report.
        """
        accountant = copy.deepcopy(self.engine.accountant)
        for _ in range(int(steps)):
            accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)
        if not len(accountant):
            return 0.0
        return float(accountant.get_epsilon(self.delta))

    def history(self) -> list[HistoryEntry]:
        """The accountant's (noise multiplier, sample rate, steps) entries, to save per client."""
        return [(float(z), float(q), int(n)) for z, q, n in self.engine.accountant.history]

    def load_history(self, history: list[HistoryEntry]) -> None:
        """Continue from a saved history (checked first): what this site has already spent."""
        self.engine.accountant.history = check_history(list(history))
