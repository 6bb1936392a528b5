"""The JAX adapter: pytrees to named arrays and back, exact in every dtype; state; optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire

from bastion.data import load_dataset, make_shard
from bastion.errors import BastionError
from bastion.runners.jax import JaxRunner, flatten
from bastion.tensors import Weights

#: float64 exists in JAX only with jax_enable_x64, which the test turns on for itself;
#: bfloat16 and the float8 formats travel widened to float32.
JAX_DTYPES = ["float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"]


def random_tree(dtype: str, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters (a dict holding a list) and state of one dtype, with an integer counter."""
    rng = np.random.default_rng(seed)

    def leaf(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape), dtype=dtype)

    params = {"layers": [{"w": leaf(64, 8), "b": leaf(8)}, {"w": leaf(8, 10), "b": leaf(10)}]}
    state = {"norm": {"mean": leaf(8), "var": leaf(8)}, "steps": jnp.asarray(seed, jnp.int32)}
    return params, state


def apply(params: Any, state: Any, x: jax.Array, train: bool) -> tuple[jax.Array, Any]:
    hidden = jax.nn.relu(x @ params["layers"][0]["w"] + params["layers"][0]["b"])
    return hidden @ params["layers"][1]["w"] + params["layers"][1]["b"], state


def native_bytes(runner: JaxRunner) -> dict[str, tuple[str, bytes]]:
    leaves, _ = flatten({"params": runner.params, "state": runner.state})
    return {n: (str(a.dtype), np.asarray(a).tobytes()) for n, a in leaves.items()}


@pytest.mark.parametrize("dtype", JAX_DTYPES)
def test_every_dtype_round_trips_through_wire_and_checkpoint(dtype: str, tmp_path: Path) -> None:
    with jax.enable_x64(dtype == "float64"):
        source = _runner(dtype, seed=1)
        sent = source.get_weights()
        assert list(sent)[:2] == ["params.layers.0.b", "params.layers.0.w"]  # tree order
        target = _runner(dtype, seed=2)
        target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
        assert native_bytes(target) == native_bytes(source)
        assert native_bytes(target)["params.layers.0.w"][0] == dtype
        assert_same_weights(target.get_weights(), sent)


def _runner(dtype: str, seed: int) -> JaxRunner:
    params, state = random_tree(dtype, seed)
    return JaxRunner(params, apply, state=state, device="cpu")


def test_state_leaves_are_the_buffers_local_buffers_keeps() -> None:
    params, state = random_tree("float32", 0)
    shared = JaxRunner(params, apply, state=state).get_weights()
    assert {"state.norm.mean", "state.steps"} <= set(shared)
    local = JaxRunner(params, apply, state=state, local_buffers=True).get_weights()
    assert not any(name.startswith("state.") for name in local)


def _one_step_twice(optimizer_state: str) -> tuple[Weights, Weights]:
    params, state = random_tree("float32", 0)
    runner = JaxRunner(params, apply, state=state, lr=0.01, optimizer_state=optimizer_state)
    shard = make_shard(load_dataset("digits"), index=0, count=20)
    start = runner.get_weights()
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    first = runner.get_weights()
    runner.set_weights(start)
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    return first, runner.get_weights()


def test_optimizer_state_reset_and_keep() -> None:
    first, second = _one_step_twice("reset")
    assert all(np.allclose(first[n], second[n], rtol=1e-5, atol=1e-6) for n in first)
    first, second = _one_step_twice("keep")
    name = "params.layers.1.w"
    assert not np.allclose(first[name], second[name], rtol=1e-3, atol=1e-4)


def test_an_absent_device_is_a_clear_error() -> None:
    params, state = random_tree("float32", 0)
    with pytest.raises(BastionError, match="task_runner.args.device"):
        JaxRunner(params, apply, state=state, device="tpu:3")
