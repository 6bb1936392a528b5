"""FedCurv's curvature on a PyTorch model: the empirical Fisher diagonal and its dtype.

The Fisher diagonal is the mean over examples of each squared per-example gradient of
the loss (Shoham et al. 2019 use it as EWC does). Per-example gradients come from
``torch.func`` (``vmap`` over ``grad``), one example at a time for modules it cannot
vectorize.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

log = logging.getLogger("bastion.runners.torch")

#: Examples per vectorized per-example-gradient pass.
FISHER_CHUNK = 64


def curvature_dtype(parameter_dtype: torch.dtype) -> torch.dtype:
    """FedCurv's Fisher terms and penalty: float64 for float64 parameters, else float32.

    Half-precision and float8 parameters would overflow or flush the summed squared
    gradients, and NumPy (the wire) has no bfloat16 or float8.
    """
    return torch.float64 if parameter_dtype == torch.float64 else torch.float32


def fisher_diagonal(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    names: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    device: torch.device,
    samples: int | None = None,
) -> dict[str, np.ndarray]:
    """The Fisher diagonal of parameters ``names`` over the first ``samples`` examples (all).

    The model is in eval mode meanwhile (no dropout, running BatchNorm statistics); each
    result is in its parameter's :func:`curvature_dtype`.
    """
    count = len(y) if samples is None else min(len(y), samples)
    x_all = torch.from_numpy(np.ascontiguousarray(x[:count]))
    y_all = torch.from_numpy(np.ascontiguousarray(y[:count])).long()
    was_training = model.training
    model.eval()
    wanted = set(names)
    parameters = {n: p.detach() for n, p in model.named_parameters() if n in wanted}
    totals = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in parameters.items()}
    try:
        for start in range(0, count, FISHER_CHUNK):
            xb = x_all[start : start + FISHER_CHUNK].to(device)
            yb = y_all[start : start + FISHER_CHUNK].to(device)
            for name, squares in _squared_gradients(model, loss_fn, parameters, xb, yb).items():
                totals[name] += squares.to(torch.float64)
    finally:
        model.train(was_training)
    return {
        n: (t / max(count, 1)).to(curvature_dtype(parameters[n].dtype)).cpu().numpy()
        for n, t in totals.items()
    }


def _squared_gradients(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    parameters: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Σ over the batch of each example's squared gradient (vectorized where torch can)."""

    def example_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> Any:
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    try:
        per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(parameters, x, y)
        return {n: (g * g).sum(dim=0) for n, g in per_example.items()}
    except RuntimeError as exc:  # a module torch.func cannot vectorize: one example at a time
        log.debug("per-example gradients without vmap: %s", exc)
    sums = {n: torch.zeros_like(p) for n, p in parameters.items()}
    for xi, yi in zip(x, y, strict=True):
        live = {n: p.clone().requires_grad_(True) for n, p in parameters.items()}
        grads = torch.autograd.grad(example_loss(live, xi, yi), list(live.values()))
        for name, g in zip(live, grads, strict=True):
            sums[name] += g * g
    return sums
