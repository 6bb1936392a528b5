"""FedCurv: FedAvg plus the summed diagonal Fisher terms each client needs for its penalty.

Shoham et al. 2019, "Overcoming Forgetting in Federated Learning on Non-IID Data",
Eq. (6)-(8). Client k sends, next to its parameters θ_k, two tensors per parameter:

    fedcurv/u/<param> = u_k = diag(F_k)          (its diagonal Fisher information)
    fedcurv/v/<param> = v_k = diag(F_k) ⊙ θ_k

The aggregator averages the parameters as FedAvg does and *sums* u and v over the
round's collaborators, unweighted; the new global model carries U = Σ_k u_k and
V = Σ_k v_k under the same names. In the next round client s trains on
L_s(θ) + λ Σ_j≠s (θ − θ_j)ᵀ diag(F_j) (θ − θ_j), which up to a constant is

    λ Σ [θ² ⊙ (U − u_s) − 2 θ ⊙ (V − v_s)]

where u_s, v_s are what client s itself sent in the round that produced this global
model (zero if it sent nothing then). ``fedcurv_penalty`` is the NumPy reference.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bastion.algorithms.base import Strategy, cast_like
from bastion.algorithms.errors import AggregationError
from bastion.algorithms.fedavg import FedAvg
from bastion.tensors import Weights

U_PREFIX = "fedcurv/u/"
V_PREFIX = "fedcurv/v/"


def fedcurv_tensors(
    params: Mapping[str, np.ndarray], fisher_diag: Mapping[str, np.ndarray]
) -> Weights:
    """The ``fedcurv/u/*`` and ``fedcurv/v/*`` tensors a client sends for ``fisher_diag``.

    Pass zeros as ``fisher_diag`` to build the initial global model's entries, so that
    every update has the same tensor names as the model it trains.
    """
    u: Weights = {}
    v: Weights = {}
    for name, fisher in fisher_diag.items():
        theta = params[name]
        if fisher.shape != theta.shape:
            raise ValueError(
                f"Fisher diagonal of {name!r} has shape {fisher.shape}, parameter {theta.shape}"
            )
        u[U_PREFIX + name] = fisher.astype(theta.dtype, copy=False)
        v[V_PREFIX + name] = (fisher * theta).astype(theta.dtype, copy=False)
    return {**u, **v}


def split_fedcurv(weights: Mapping[str, np.ndarray]) -> tuple[Weights, Weights, Weights]:
    """Split into (parameters, u by parameter name, v by parameter name)."""
    params: Weights = {}
    u: Weights = {}
    v: Weights = {}
    for name, array in weights.items():
        if name.startswith(U_PREFIX):
            u[name[len(U_PREFIX) :]] = array
        elif name.startswith(V_PREFIX):
            v[name[len(V_PREFIX) :]] = array
        else:
            params[name] = array
    return params, u, v


def fedcurv_penalty(
    theta: np.ndarray,
    u_sum: np.ndarray,
    v_sum: np.ndarray,
    own_u: np.ndarray | None,
    own_v: np.ndarray | None,
    lam: float,
) -> tuple[float, np.ndarray]:
    """Value and gradient of λ Σ [θ²(U − u_s) − 2θ(V − v_s)] for one parameter tensor.

    ``own_u``/``own_v`` are what this client sent in the round behind ``u_sum``/``v_sum``,
    or None if it took no part. The value omits the constant λ Σ_j θ_jᵀ F_j θ_j, so it
    can be negative; the gradient 2λ [θ(U − u_s) − (V − v_s)] is exact.
    """
    theta64 = np.asarray(theta, dtype=np.float64)
    others_u = np.asarray(u_sum, dtype=np.float64)
    others_v = np.asarray(v_sum, dtype=np.float64)
    if own_u is not None:
        others_u = others_u - own_u
    if own_v is not None:
        others_v = others_v - own_v
    value = lam * float(np.sum(theta64 * theta64 * others_u - 2.0 * theta64 * others_v))
    gradient = 2.0 * lam * (theta64 * others_u - others_v)
    return value, gradient


class FedCurv(Strategy):
    """Example-weighted average of parameters; unweighted sum of the Fisher tensors."""

    name = "fedcurv"

    def __init__(self) -> None:
        self._average = FedAvg()
        self._global: Weights = {}
        self._fisher_names: list[str] = []
        self._sums: dict[str, np.ndarray] = {}

    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        params, u, v = split_fedcurv(global_weights)
        self._check_layout(params, u, v)
        self._global = global_weights
        self._fisher_names = [n for n in global_weights if n not in params]
        self._sums = {n: np.zeros(global_weights[n].shape) for n in self._fisher_names}
        self._average.begin_round(params, round_number)

    def accumulate(self, collaborator: str, update: Weights, weight: float) -> None:
        self._average.accumulate(collaborator, update, weight)  # reads only the parameters
        for name, total in self._sums.items():
            total += update[name].astype(np.float64, copy=False)

    @property
    def accepted(self) -> int:
        return self._average.accepted

    def finalize(self) -> Weights:
        merged = {**self._average.average(), **self._sums}
        return cast_like(merged, self._global)

    @staticmethod
    def _check_layout(params: Weights, u: Weights, v: Weights) -> None:
        if not u:
            raise AggregationError(
                f"fedcurv: the global model has no {U_PREFIX}* tensors; initialize it with "
                "bastion.algorithms.fedcurv.fedcurv_tensors (zeros) for each trained parameter"
            )
        for name in sorted(set(u) | set(v)):
            if name not in u or name not in v:
                raise AggregationError(
                    f"fedcurv: parameter {name!r} has only one of {U_PREFIX}{name} and "
                    f"{V_PREFIX}{name}; both are needed"
                )
            if name not in params or not u[name].shape == v[name].shape == params[name].shape:
                raise AggregationError(
                    f"fedcurv: {U_PREFIX}{name} and {V_PREFIX}{name} must match a parameter "
                    f"{name!r} of the same shape in the model"
                )
