"""The PyTorch adapter: exact weight round trips in every dtype, buffers, optimizer state, learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.roundtrip import assert_same_weights, through_checkpoint, through_wire
from support.torch_modules import DEVICES, TORCH_DTYPES, native_bytes, randomize
from torch import nn

from bastion.data import load_dataset, make_shard
from bastion.errors import PlanError
from bastion.runners.base import TaskRunner
from bastion.runners.torch import TorchRunner
from bastion.tensors import Weights


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 32)
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.linear(x))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_weights_round_trip_exactly(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    runner = TorchRunner(WithBatchNorm().to(dtype))
    assert isinstance(runner, TaskRunner)
    weights = runner.get_weights()
    assert list(weights) == list(
        runner.model.state_dict()
    )  # stable, module order, buffers included
    assert weights["norm.num_batches_tracked"].dtype == np.int64
    changed = {k: (v + 1).astype(v.dtype) for k, v in weights.items()}
    runner.set_weights(changed)
    for name, value in runner.get_weights().items():
        assert value.dtype == changed[name].dtype
        assert value.tobytes() == changed[name].tobytes()


def test_local_buffers_stay_out_of_the_federation() -> None:
    runner = TorchRunner(WithBatchNorm(), local_buffers=True)
    assert not any(name.startswith("norm.running") for name in runner.get_weights())


def test_shape_mismatch_is_a_clear_error() -> None:
    runner = TorchRunner(WithBatchNorm())
    weights = runner.get_weights()
    weights["head.bias"] = np.zeros(3, np.float32)
    with pytest.raises(Exception, match="head.bias"):
        runner.set_weights(weights)


def test_training_learns_digits() -> None:
    torch.manual_seed(0)
    shard = make_shard(load_dataset("digits"), index=0, count=1)
    runner = TorchRunner(WithBatchNorm(), lr=0.1, momentum=0.9, seed=0)
    before = runner.validate(shard).metrics["accuracy"]
    result = runner.train(shard, epochs=3, batch_size=32)
    after = runner.validate(shard)
    assert result.example_count == shard.train_count
    assert after.example_count == shard.valid_count
    assert before < 0.3 < 0.9 < after.metrics["accuracy"]


# ---------------------------------------------------------------- every dtype, wire, policies


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_dtype_round_trips_through_wire_and_checkpoint(
    dtype: torch.dtype, device: str, tmp_path: Path
) -> None:
    """Weights → named arrays → frames → checkpoint → another model's weights, bit for bit."""
    source = TorchRunner(WithBatchNorm().to(dtype), device=device)
    randomize(source.model, seed=1)
    sent = source.get_weights()
    if dtype == torch.bfloat16:  # NumPy has no bfloat16: it travels as float32, exactly
        assert sent["linear.weight"].dtype == np.float32
    target = TorchRunner(WithBatchNorm().to(dtype), device=device)
    randomize(target.model, seed=2)
    target.set_weights(through_checkpoint(through_wire(sent), tmp_path))
    assert native_bytes(target.model) == native_bytes(source.model)
    assert target.model.linear.weight.device.type == device
    assert_same_weights(target.get_weights(), sent)


def _one_step_twice(optimizer_state: str) -> tuple[Weights, Weights]:
    """The weights after one full-batch step from the same start, taken twice in a row."""
    torch.manual_seed(0)
    shard = make_shard(load_dataset("digits"), index=0, count=20)
    runner = TorchRunner(
        WithBatchNorm(), lr=0.1, momentum=0.9, optimizer_state=optimizer_state, device="cpu"
    )
    start = runner.get_weights()
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    first = runner.get_weights()
    runner.set_weights(start)
    runner.train(shard, epochs=1, batch_size=shard.train_count)
    return first, runner.get_weights()


def test_optimizer_state_reset_starts_every_round_afresh() -> None:
    first, second = _one_step_twice("reset")
    assert all(np.allclose(first[n], second[n], rtol=1e-5, atol=1e-6) for n in first)


def test_optimizer_state_keep_carries_momentum_over_rounds() -> None:
    first, second = _one_step_twice("keep")
    assert not np.allclose(first["head.weight"], second["head.weight"], rtol=1e-3, atol=1e-4)


def test_unknown_optimizer_state_names_the_key() -> None:
    with pytest.raises(PlanError, match="task_runner.args.optimizer_state"):
        TorchRunner(WithBatchNorm(), optimizer_state="sometimes")
