"""FedBuff's buffered update, expressed for the streaming strategies.

Nguyen et al. 2022, Algorithm 1: client k starts from the version w^{τ_k} and returns
Δ_k = w^{τ_k} - y_k (its starting model minus its trained model). The server buffers
K of them, Δ̄ = (1/K) Σ_k s(t - τ_k) Δ_k, and steps w^{t+1} = w^t - η_g Δ̄.

The strategies of ``bastion.algorithms`` average full local models, so each buffered
update is handed to them translated onto the current version,

    y'_k = w^t - η_g s(t - τ_k) Δ_k,

with weight 1: FedAvg's average (1/K) Σ_k y'_k is then exactly w^t - η_g Δ̄, and FedOpt's
pseudo-gradient (1/K) Σ_k y'_k - w^t is -η_g Δ̄, the buffered FedAdam/FedYogi step.
"""

from __future__ import annotations

import numpy as np

from bastion.tensors import Weights


def translated_update(current: Weights, start: Weights, local: Weights, scale: float) -> Weights:
    """y' = w^t + scale (y - w^τ) per tensor, in float64; ``scale`` is η_g s(τ).

    Integer tensors (counters) take the local value: they are not trained by gradient.
    """
    out: Weights = {}
    for name, now in current.items():
        if now.dtype.kind != "f":
            out[name] = np.asarray(local[name])
            continue
        moved = np.asarray(local[name], dtype=np.float64) - np.asarray(start[name], np.float64)
        moved *= scale
        moved += now
        out[name] = moved
    return out
