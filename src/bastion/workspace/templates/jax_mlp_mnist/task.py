"""A two-layer perceptron with batch normalization, in plain JAX: the model this workspace federates."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from bastion.runners.jax import JaxRunner

SIZES = (28 * 28, 128, 10)
MOMENTUM = 0.9  # of the running batch-norm statistics
EPSILON = 1e-5


def init_params(key: jax.Array) -> dict[str, Any]:
    """He-initialized weights (He et al. 2015), zero biases, unit batch-norm scale."""
    k1, k2 = jax.random.split(key)
    inputs, hidden, classes = SIZES
    return {
        "hidden": {
            "w": jax.random.normal(k1, (inputs, hidden)) * jnp.sqrt(2.0 / inputs),
            "b": jnp.zeros(hidden),
        },
        "norm": {"scale": jnp.ones(hidden), "shift": jnp.zeros(hidden)},
        "out": {
            "w": jax.random.normal(k2, (hidden, classes)) * jnp.sqrt(2.0 / hidden),
            "b": jnp.zeros(classes),
        },
    }


def init_state() -> dict[str, Any]:
    hidden = SIZES[1]
    return {"norm": {"mean": jnp.zeros(hidden), "var": jnp.ones(hidden)}}


def apply(params: Any, state: Any, x: jax.Array, train: bool) -> tuple[jax.Array, Any]:
    """Logits, and the batch-norm statistics updated when training (Ioffe & Szegedy 2015)."""
    h = x @ params["hidden"]["w"] + params["hidden"]["b"]
    if train:
        mean, var = h.mean(axis=0), h.var(axis=0)
        norm = state["norm"]
        state = {
            "norm": {
                "mean": MOMENTUM * norm["mean"] + (1 - MOMENTUM) * mean,
                "var": MOMENTUM * norm["var"] + (1 - MOMENTUM) * var,
            }
        }
    else:
        mean, var = state["norm"]["mean"], state["norm"]["var"]
    h = (h - mean) / jnp.sqrt(var + EPSILON) * params["norm"]["scale"] + params["norm"]["shift"]
    logits = jax.nn.relu(h) @ params["out"]["w"] + params["out"]["b"]
    return logits, state


def build_runner(
    seed: int = 0, lr: float = 0.05, local_buffers: bool = False, optimizer_state: str = "reset"
) -> JaxRunner:
    return JaxRunner(
        init_params(jax.random.PRNGKey(seed)),
        apply,
        state=init_state(),
        lr=lr,
        momentum=0.9,
        local_buffers=local_buffers,
        optimizer_state=optimizer_state,
        seed=seed,
    )
