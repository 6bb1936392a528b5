"""FedOpt: a server-side adaptive optimizer applied to the averaged update.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2. Each round the
pseudo-gradient is Δ_t = Σ_k (n_k / n)(x_k − x_t), the example-weighted average of
local models minus the global model (the paper averages uniformly; weighting by
example count is FedAvg's convention and the same when counts are equal). Then

    m_t = β1 m_{t−1} + (1 − β1) Δ_t
    v_t = <FedAdagrad, FedAdam or FedYogi rule>
    x_{t+1} = x_t + η m_t / (√v_t + τ)

with m_{−1} = 0 and v_{−1} = τ² (the algorithm asks for v_{−1} ≥ τ²; Flower starts at
0, which only differs in the first steps). No bias correction, as in the paper. Only
floating-point tensors are optimized; integer tensors take the plain average.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import numpy as np

from bastion.algorithms.base import cast_like
from bastion.algorithms.errors import AggregationError
from bastion.algorithms.fedavg import FedAvg
from bastion.algorithms.server_state import check_state_fits, float_tensor_names, split_state
from bastion.tensors import Weights


class FedOpt(FedAvg):
    """Base of FedAdagrad, FedAdam and FedYogi: the shared first moment and server step."""

    def __init__(self, *, eta: float, beta_1: float, tau: float) -> None:
        super().__init__()
        self.eta = eta
        self.beta_1 = beta_1
        self.tau = tau
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}

    @abstractmethod
    def update_second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> None:
        """Turn v_{t−1} into v_t in place, given Δ_t²."""

    def step(
        self, global_weights: Mapping[str, np.ndarray], pseudo_gradient: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One server step, x_t + η m_t / (√v_t + τ) in float64, per tensor of ``pseudo_gradient``.

        ``pseudo_gradient`` points where the model should move (local − global, or −∇f
        when driving the optimizer directly); moments start on the first call.
        """
        if not self._m:
            for name, delta in pseudo_gradient.items():
                self._m[name] = np.zeros(np.shape(delta), dtype=np.float64)
                self._v[name] = np.full(np.shape(delta), self.tau**2, dtype=np.float64)
        elif sorted(self._m) != sorted(pseudo_gradient):
            raise AggregationError(
                f"{self.name}: pseudo-gradient names {sorted(pseudo_gradient)[:3]} differ from "
                f"the tensors its moments track {sorted(self._m)[:3]}"
            )
        new: dict[str, np.ndarray] = {}
        for name, raw_delta in pseudo_gradient.items():
            delta = np.asarray(raw_delta, dtype=np.float64)
            m, v = self._m[name], self._v[name]
            m *= self.beta_1
            m += (1.0 - self.beta_1) * delta
            self.update_second_moment(v, delta * delta)
            current = np.asarray(global_weights[name], dtype=np.float64)
            new[name] = current + self.eta * m / (np.sqrt(v) + self.tau)
        return new

    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        if self._m:
            check_state_fits(self.name, self._m, global_weights)
        super().begin_round(global_weights, round_number)

    def finalize(self) -> Weights:
        average = self.average()
        names = float_tensor_names(self._global)
        pseudo_gradient = {n: average[n] - self._global[n].astype(np.float64) for n in names}
        new = {**average, **self.step(self._global, pseudo_gradient)}
        return cast_like(new, self._global)

    def state_dict(self) -> Weights:
        state = {f"m/{n}": a.copy() for n, a in self._m.items()}
        state.update({f"v/{n}": a.copy() for n, a in self._v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        slots = split_state(self.name, state, ("m", "v"))
        self._m, self._v = slots["m"], slots["v"]
