"""The MXNet adapter (legacy): exact round trips in every dtype Gluon trains in, buffers, optimizer.

Runs in ``.venv-mxnet`` (``make test`` does that); the main venv has no mxnet and skips it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip(
    "mxnet", reason="MXNet runs in .venv-mxnet: `make test` runs this file there"
)

from mxnet.gluon import nn  # noqa: E402
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire  # noqa: E402

from bastion.data import load_dataset, make_shard  # noqa: E402
from bastion.errors import BastionError  # noqa: E402
from bastion.runners.mxnet import DTYPES, MxnetRunner  # noqa: E402
from bastion.tensors import Weights  # noqa: E402


def block(dtype: str = "float32") -> nn.HybridSequential:
    """Sized by a float32 forward pass, then cast: MXNet runs float16 dense layers on GPUs only."""
    model = nn.HybridSequential()
    model.add(nn.Dense(16), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(10))
    model.initialize(mx.init.Xavier())
    model(mx.nd.zeros((1, 64)))
    model.cast(dtype)
    return model


def randomize(runner: MxnetRunner, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for parameter in runner.block.collect_params().values():
        values = rng.standard_normal(parameter.shape).astype(parameter.dtype)
        parameter.set_data(mx.nd.array(values, dtype=parameter.dtype))


def native_bytes(runner: MxnetRunner) -> dict[str, tuple[str, bytes]]:
    return {
        name: (np.dtype(p.dtype).name, p.data().asnumpy().tobytes())
        for name, p in runner.block._collect_params_with_prefix().items()
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_through_wire_and_checkpoint(dtype: str, tmp_path: Path) -> None:
    source = MxnetRunner(block(dtype), device="cpu")
    randomize(source, seed=1)
    sent = source.get_weights()
    assert list(sent)[:2] == ["0.weight", "0.bias"]  # structural, not dense3_weight
    target = MxnetRunner(block(dtype), device="cpu")
    randomize(target, seed=2)
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert native_bytes(target) == native_bytes(source)
    assert native_bytes(target)["0.weight"][0] == dtype
    assert_same_weights(target.get_weights(), sent)


def test_running_statistics_are_the_buffers_local_buffers_keeps() -> None:
    shared = MxnetRunner(block(), input_shape=(1, 64)).get_weights()
    assert {"1.running_mean", "1.running_var"} <= set(shared)
    local = MxnetRunner(block(), input_shape=(1, 64), local_buffers=True).get_weights()
    assert not any(".running_" in name for name in local)
    assert "1.gamma" in local


def _one_step_twice(optimizer_state: str) -> tuple[Weights, Weights]:
    mx.random.seed(0)
    runner = MxnetRunner(
        block(),
        input_shape=(1, 64),
        optimizer_args={"learning_rate": 0.1, "momentum": 0.9},
        optimizer_state=optimizer_state,
    )
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
    assert not np.allclose(first["3.weight"], second["3.weight"], rtol=1e-3, atol=1e-4)


def test_unsized_parameters_are_a_clear_error() -> None:
    unsized = nn.HybridSequential()
    unsized.add(nn.Dense(4))
    unsized.initialize()
    with pytest.raises(BastionError, match="input_shape"):
        MxnetRunner(unsized)


def test_an_unknown_device_is_a_clear_error() -> None:
    with pytest.raises(BastionError, match="task_runner.args.device"):
        MxnetRunner(block(), input_shape=(1, 64), device="tpu")
