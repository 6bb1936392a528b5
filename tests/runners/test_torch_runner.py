"""The PyTorch adapter: exact weight round trips, buffers, and real learning on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.data import load_dataset, make_shard
from bastion.runners.base import TaskRunner
from bastion.runners.torch import TorchRunner


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
