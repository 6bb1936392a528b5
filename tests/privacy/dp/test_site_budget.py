"""A site's local DP budget: the epsilon predicted before a train task is the epsilon after it.

Real DP-SGD through Opacus on a tiny PyTorch model: ``LocalPrivacyGuard`` asks the runner
for the task's steps and the trainer for the epsilon after them, then the runner trains
and its accountant reports. Small shards with small batches make empty Poisson batches
(which also count) likely.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bastion.collaborator.local_privacy import LocalPrivacyGuard
from bastion.data.types import DataShard
from bastion.privacy.dp.local import poisson_schedule, round_steps
from bastion.spec.tasks import TaskSpec

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings(
    "ignore:Secure RNG turned off", "ignore:Full backward hook is firing"
)

Z, CLIP, DELTA = 1.1, 1.0, 1e-5


def _shard(examples: int, seed: int = 0) -> DataShard:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return DataShard(x, y, x[:8], y[:8], num_classes=2)


def _runner(accountant: str = "rdp") -> Any:
    from bastion.runners.torch import TorchRunner

    torch.manual_seed(0)
    runner = TorchRunner(torch.nn.Linear(6, 2), threads=1, lr=0.1)
    runner.enable_local_dp(Z, CLIP, DELTA, accountant=accountant)
    return runner


def _train(**args: Any) -> TaskSpec:
    return TaskSpec(name="train", kind="train", args=args)


@pytest.mark.parametrize(
    ("examples", "args", "accountant"),
    [
        (50, {"epochs": 1, "batch_size": 8}, "rdp"),  # 7 batches, the last one short
        (50, {"epochs": 3, "batch_size": 8, "max_batches": 10}, "rdp"),  # the cap spans epochs
        (20, {"epochs": 2, "batch_size": 1}, "rdp"),  # q = 1/20: empty batches are likely
        (33, {}, "rdp"),  # TorchRunner.train's defaults: 1 epoch of batches of 32
        (20, {"epochs": 2, "batch_size": 1}, "prv"),  # the plan's `pld` (Opacus's PRV)
    ],
)
def test_predicted_epsilon_is_the_epsilon_after_training(
    examples: int, args: dict[str, Any], accountant: str
) -> None:
    runner = _runner(accountant)
    data = _shard(examples)
    guard = LocalPrivacyGuard("site-1", runner, budget=None)
    trainer = runner.local_dp
    empty: list[float] = []
    count_empty = trainer.count_empty_step
    trainer.count_empty_step = lambda rate: (empty.append(rate), count_empty(rate))
    for _round in range(2):  # the second prediction starts from a non-empty history
        rate, steps = runner.local_dp_steps(data, **args)
        predicted = trainer.epsilon_after(rate, steps)
        before = sum(n for _, _, n in trainer.history())
        result = runner.train(data, **args)
        assert sum(n for _, _, n in trainer.history()) - before == steps
        assert trainer.epsilon() == pytest.approx(predicted, rel=1e-12)
        assert result.metrics["dp_epsilon"] == pytest.approx(predicted, rel=1e-12)
        assert guard.spent() == pytest.approx(predicted, rel=1e-12)
    if args.get("batch_size") == 1:
        assert empty, "expected some empty Poisson batches at q = 1/20"


def test_the_schedule_is_opacus_poisson_loader() -> None:
    from opacus.data_loader import DPDataLoader

    for examples, batch in [(50, 8), (1797, 32), (49, 1), (7, 10), (1000, 3)]:
        dataset = torch.utils.data.TensorDataset(torch.zeros(examples, 1))
        loader = DPDataLoader.from_data_loader(
            torch.utils.data.DataLoader(dataset, batch_size=batch)
        )
        assert poisson_schedule(examples, batch) == (1 / len(loader), len(loader))
    assert round_steps(50, 3, 8, 10) == (1 / 7, 10)
    assert round_steps(50, 3, 8, None) == (1 / 7, 21)


def test_a_site_declines_the_round_that_would_pass_its_budget() -> None:
    runner = _runner()
    data = _shard(50)
    task = _train(epochs=1, batch_size=8)
    trainer = runner.local_dp
    one = trainer.epsilon_after(*runner.local_dp_steps(data, **task.args))
    probe = _runner()
    probe.local_dp.load_history([(Z, 1 / 7, 14)])
    two = probe.local_dp.epsilon()
    guard = LocalPrivacyGuard("site-1", runner, budget=(one + two) / 2)

    assert guard.refusal(data, 1, task) is None
    runner.train(data, **task.args)
    refusal = guard.refusal(data, 2, task)
    assert refusal is not None
    assert refusal.metrics == {
        "dp_epsilon": pytest.approx(one, rel=1e-12),
        "dp_epsilon_next": pytest.approx(two, rel=1e-12),
        "dp_epsilon_budget": (one + two) / 2,
    }
    assert refusal.message == (
        f"site-1: declining 'train' of round 2: local DP budget: epsilon spent {one:.4g}, its 7 "
        f"DP-SGD steps would bring it to {two:.4g} (delta=1e-05), over "
        f"differential_privacy.local.epsilon_budget={(one + two) / 2:g}"
    )
    assert refusal.message.endswith(refusal.reason) and "site-1" not in refusal.reason
    # A smaller task still fits: the budget is on epsilon, not on rounds.
    assert guard.refusal(data, 2, _train(epochs=1, batch_size=8, max_batches=1)) is None
    # Declining spent nothing.
    assert trainer.epsilon() == pytest.approx(one, rel=1e-12)
