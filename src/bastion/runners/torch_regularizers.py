"""Client-side regularizers of a PyTorch training: terms added to the data loss.

A ``Regularizer`` is anchored once per training at the weights loaded then (the round's
global model) and adds ``penalty(model)`` to every step's loss:

- ``ProximalTerm``: FedProx's (μ/2)‖w − w_global‖² (Li et al. 2020, "Federated
  Optimization in Heterogeneous Networks").
- ``CurvaturePenalty``: FedCurv's λ Σ [w²(U − u_s) − 2w(V − v_s)] (Shoham et al. 2019,
  "Overcoming Forgetting in Federated Learning on Non-IID Data"), U and V the summed
  Fisher terms of all sites, u_s and v_s this site's own (``FedCurvTerms``).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from bastion.errors import PlanError
from bastion.runners.torch_fedcurv import FedCurvTerms


def coefficient(value: object, key: str) -> float:
    """A regularizer strength from the plan: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise PlanError(f"key '{key}': must be a number >= 0, got {value!r}")
    if not math.isfinite(float(value)):
        raise PlanError(f"key '{key}': must be finite, got {value!r}")
    return float(value)


def penalty_dtype(model: nn.Module) -> torch.dtype:
    """float64 for a model with float64 parameters (a float32 gradient would round λ), else float32."""
    wide = any(p.dtype == torch.float64 for p in model.parameters())
    return torch.float64 if wide else torch.float32


class Regularizer(Protocol):
    """A loss term anchored at the round's global model."""

    def prepare(self, model: nn.Module) -> None:
        """Anchor at the weights ``model`` holds now: the round's global model."""
        ...

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The term for ``model``'s current weights, differentiable in them."""
        ...

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """What the term reports with the training's metrics at its end."""
        ...


class ProximalTerm:
    """FedProx's (μ/2)‖w − w_global‖² over the trainable parameters, summed in float32."""

    def __init__(self, mu: float, device: torch.device) -> None:
        self.mu = mu
        self._device = device
        self._anchor: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module) -> None:
        self._anchor = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }

    def penalty(self, model: nn.Module) -> torch.Tensor:
        parameters = dict(model.named_parameters())
        squared = sum(
            (((parameters[n] - g) ** 2).sum().to(torch.float32) for n, g in self._anchor.items()),
            torch.zeros((), device=self._device),
        )
        return 0.5 * self.mu * squared

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """``proximal_term``: (μ/2)‖w − w_global‖² at the end of training."""
        with torch.no_grad():
            return {"proximal_term": float(self.penalty(model))}


class CurvaturePenalty:
    """FedCurv's λ Σ [w²(U − u_s) − 2w(V − v_s)], each parameter in its curvature dtype."""

    def __init__(self, lam: float, terms: FedCurvTerms, device: torch.device) -> None:
        self.lam = lam
        self._terms = terms
        self._device = device
        self._dtype = torch.float32
        self._others: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = ({}, {})

    def prepare(self, model: nn.Module) -> None:
        self._dtype = penalty_dtype(model)
        self._others = self._terms.others(dict(model.named_parameters()), self._device)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        others_u, others_v = self._others
        parameters = dict(model.named_parameters())
        curvature = sum(
            (
                (w * w * others_u[n] - 2.0 * w * others_v[n]).sum().to(self._dtype)
                for n in self._terms.curved
                for w in (parameters[n].to(others_u[n].dtype),)
            ),
            torch.zeros((), device=self._device, dtype=self._dtype),
        )
        return self.lam * curvature

    def metrics(self, model: nn.Module) -> dict[str, float]:
        return {}
