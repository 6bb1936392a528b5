"""DP-FedAvg: federated averaging with user-level differential privacy on the server.

McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models". For
each accepted client k the server clips its delta d_k = local_k - global to L2 norm S,
and releases the fixed-denominator estimate

    avg = (sum_k clip(d_k, S)) / m  +  N(0, sigma^2 I),   sigma = z * S / m

where m is the *expected* number of clients per round (q times the population), not the
number that arrived: dividing by a fixed m bounds one client's influence on ``avg`` by
S / m, whatever the others do. The new model is ``global + server_learning_rate * avg``.

Each client counts once (its example count is ignored): unbounded weights would break
the S / m sensitivity. The guarantee needs clients sampled independently with
probability q each round (Poisson sampling) and the accountant run with that q and z.
With adaptive clipping the update noise uses z_delta from ``AdaptiveClipping`` so that
updates and the clipped-count estimate together spend the budget of multiplier z.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from bastion.algorithms.base import Strategy, cast_like
from bastion.errors import BastionError, UpdateRejected
from bastion.privacy.dp.clipping import (
    AdaptiveClipping,
    Clipping,
    FixedClipping,
    clip_by_global_norm,
)
from bastion.privacy.dp.noise import NoiseSource, noise_source
from bastion.spec.differential_privacy import DPFedAvgArgs
from bastion.tensors import Weights

log = logging.getLogger(__name__)

_CLIP_STATE = "dp_fedavg.clip_norm"


class DPFedAvg(Strategy):
    """Clipped, noised federated averaging (McMahan et al. 2018), streaming."""

    name = "dp_fedavg"

    def __init__(
        self,
        noise_multiplier: float,
        expected_clients: float,
        clipping: Clipping,
        server_learning_rate: float = 1.0,
        seed: int | None = None,
        noise: NoiseSource | None = None,
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise BastionError(
                f"noise_multiplier must be positive, got {noise_multiplier}; "
                "without noise there is no differential privacy"
            )
        if not expected_clients > 0:
            raise BastionError(f"expected_clients must be positive, got {expected_clients}")
        if not server_learning_rate > 0:
            raise BastionError(f"server_learning_rate must be positive, got {server_learning_rate}")
        self.noise_multiplier = float(noise_multiplier)
        self.expected_clients = float(expected_clients)
        self.clipping = clipping
        self.server_learning_rate = float(server_learning_rate)
        self._update_multiplier = (
            clipping.update_noise_multiplier(noise_multiplier)
            if isinstance(clipping, AdaptiveClipping)
            else self.noise_multiplier
        )
        self.clip_norm = (
            clipping.initial_clip_norm
            if isinstance(clipping, AdaptiveClipping)
            else clipping.clip_norm
        )
        if seed is not None and noise is None:
            log.warning("DPFedAvg noise is seeded: reproducible, and not private in production")
        self._noise = noise if noise is not None else noise_source(seed)
        self._global: Weights = {}
        self._sum: dict[str, np.ndarray] = {}
        self._count = 0
        self._unclipped = 0

    @classmethod
    def from_args(cls, args: DPFedAvgArgs) -> DPFedAvg:
        """Build from validated plan arguments."""
        if args.expected_clients is None:
            raise BastionError(
                "aggregation.args.expected_clients: needed outside a plan; a plan derives it "
                "from participation.fraction x roster (see create_plan_strategy)"
            )
        clipping: Clipping = FixedClipping(args.clip_norm)
        if args.adaptive:
            clipping = AdaptiveClipping(
                initial_clip_norm=args.clip_norm,
                target_quantile=args.target_quantile,
                learning_rate=args.clip_learning_rate,
                count_noise_std=args.count_noise_std or args.expected_clients / 20,
            )
        return cls(
            args.noise_multiplier,
            args.expected_clients,
            clipping,
            server_learning_rate=args.server_learning_rate,
            seed=args.seed,
        )

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise added to the average: z_delta * S / m."""
        return self._update_multiplier * self.clip_norm / self.expected_clients

    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        self._global = global_weights
        self._sum = {n: np.zeros(a.shape, dtype=np.float64) for n, a in global_weights.items()}
        self._count = 0
        self._unclipped = 0

    def accumulate(self, collaborator: str, update: Weights, weight: float) -> None:
        delta = {}
        for name, reference in self._global.items():
            value = np.asarray(update[name], dtype=np.float64)
            if not np.isfinite(value).all():
                raise UpdateRejected(f"update from {collaborator!r}: {name!r} is not finite")
            delta[name] = value - reference.astype(np.float64)
        clipped, norm = clip_by_global_norm(delta, self.clip_norm)
        for name, total in self._sum.items():
            total += clipped[name]
        self._count += 1
        self._unclipped += int(norm <= self.clip_norm)

    def accumulate_secure_sum(
        self, delta_sum: Weights, total_weight: float, count: int, unclipped: float
    ) -> None:
        """Fold in a secure aggregation sum of deltas each client clipped to ``clip_norm``.

        With secure aggregation the server never sees one update, so clipping moves to the
        clients (``secure_clip_norm``); each counts once, so ``total_weight`` is ``count``.
        """
        for name, total in self._sum.items():
            total += np.asarray(delta_sum[name], dtype=np.float64)
        self._count += count
        self._unclipped += int(round(unclipped))

    def secure_clip_norm(self) -> float:
        """The L2 bound clients apply to their own deltas under secure aggregation."""
        return self.clip_norm

    @property
    def accepted(self) -> int:
        return self._count

    def finalize(self) -> Weights:
        if self._count == 0:
            raise RuntimeError("finalize() called before any result was accumulated")
        std = self.noise_std
        new: dict[str, np.ndarray] = {}
        for name, total in self._sum.items():
            average = total / self.expected_clients + self._noise.gaussian(total.shape, std)
            new[name] = self._global[name].astype(np.float64) + self.server_learning_rate * average
        if isinstance(self.clipping, AdaptiveClipping):
            self.clip_norm = self.clipping.next_clip_norm(
                self.clip_norm, self._noisy_unclipped_fraction()
            )
        return cast_like(new, self._global)

    def _noisy_unclipped_fraction(self) -> float:
        """Andrew et al.'s private estimate of the fraction of deltas no longer than C.

        Each client contributes ``b_i - 1/2`` (centred, so one client moves the sum by at
        most 1/2: the sensitivity ``z_delta`` assumes when it charges the count
        ``(2 sigma_b)^-2`` of the budget); the noisy sum over the expected count is shifted
        back by 1/2 and clamped to [0, 1], as in TensorFlow Privacy's quantile estimator.
        """
        assert isinstance(self.clipping, AdaptiveClipping)
        centred = self._unclipped - 0.5 * self._count
        noise = float(self._noise.gaussian((1,), self.clipping.count_noise_std)[0])
        return min(1.0, max(0.0, (centred + noise) / self.expected_clients + 0.5))

    def state_dict(self) -> Weights:
        return {_CLIP_STATE: np.array([self.clip_norm], dtype=np.float64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if not state:  # the initial checkpoint: keep the configured clip norm
            return
        if set(state) != {_CLIP_STATE}:
            raise BastionError(
                f"DPFedAvg state must hold exactly {_CLIP_STATE!r}, got {sorted(state)}"
            )
        value = float(np.asarray(state[_CLIP_STATE]).reshape(-1)[0])
        if not (math.isfinite(value) and value > 0):
            raise BastionError(f"checkpointed clip norm {value} is not a positive number")
        self.clip_norm = value
