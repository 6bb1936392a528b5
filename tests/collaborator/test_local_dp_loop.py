"""The collaborator loop with local DP: the ledger is on disk before an update leaves the
site, and a train task over the budget is declined with the rest of its round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.collaborator.local_privacy import LocalPrivacyGuard
from bastion.collaborator.loop import Collaborator
from bastion.data.types import DataShard
from bastion.privacy.dp.site_ledger import SiteLedger
from bastion.protocol import Assignment
from bastion.spec.tasks import TaskSpec
from bastion.tensors import Weights

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

Z, DELTA = 1.0, 1e-5
TASKS = (
    TaskSpec(name="validate_global", kind="validate"),
    TaskSpec(name="train", kind="train", args={"batch_size": 8}),
    TaskSpec(name="validate_local", kind="validate", model="local"),
)


class LedgerCheckingAggregator:
    """A scripted aggregator that records, as each training result arrives, what the site's
    ledger says at that moment, and every decline."""

    def __init__(self, script: list[Assignment], ledger: Path) -> None:
        self.script = script
        self.ledger = ledger
        self.sent: list[tuple[int, str, bool]] = []
        self.on_disk: list[tuple[float, float]] = []
        self.declined: list[tuple[int, str, str, dict[str, float]]] = []

    def get_tasks(self) -> Assignment:
        return self.script.pop(0)

    def get_model(self, round_number: int) -> Weights:
        return {"weight": np.zeros((2, 4), np.float32), "bias": np.zeros(2, np.float32)}

    def send_result(self, round_number: int, task: str, *result: Any) -> tuple[bool, str]:
        _examples, metrics, weights = result
        if task == "train":
            saved = json.loads(self.ledger.read_text())["epsilon"]
            self.on_disk.append((saved, metrics["dp_epsilon"]))
        self.sent.append((round_number, task, weights is not None))
        return True, ""

    def decline_task(
        self, round_number: int, task: str, reason: str, metrics: dict[str, float]
    ) -> tuple[bool, str]:
        self.declined.append((round_number, task, reason, dict(metrics)))
        return True, ""


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook is firing")
def test_the_ledger_is_written_before_the_update_and_over_budget_is_declined(
    tmp_path: Path,
) -> None:
    from bastion.runners.torch import TorchRunner

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    shard = DataShard(x, y, x, y, num_classes=2)
    runner = TorchRunner(torch.nn.Linear(4, 2), threads=1)
    runner.enable_local_dp(Z, 1.0, DELTA)
    rate, steps = runner.local_dp_steps(shard, batch_size=8)
    one = runner.local_dp.epsilon_after(rate, steps)
    two = runner.local_dp.epsilon_after(rate, 2 * steps)
    ledger = SiteLedger(tmp_path / "site-1.json", "site-1", "ca-sha256:AA")
    guard = LocalPrivacyGuard("site-1", runner, (one + two) / 2, ledger)
    aggregator = LedgerCheckingAggregator(
        [Assignment("run", 1, TASKS), Assignment("run", 2, TASKS), Assignment("done")],
        ledger.path,
    )
    Collaborator("site-1", aggregator, runner, shard, retryable=(), privacy=guard).run()

    assert aggregator.on_disk == [(pytest.approx(one, rel=1e-12), pytest.approx(one, rel=1e-12))]
    assert aggregator.sent == [
        (1, "validate_global", False),
        (1, "train", True),
        (1, "validate_local", False),
        (2, "validate_global", False),  # then train is declined, and validate_local with it
    ]
    [(number, task, reason, metrics)] = aggregator.declined
    assert (number, task) == (2, "train")
    assert reason.startswith(f"local DP budget: epsilon spent {one:.4g}, its {steps} DP-SGD")
    assert metrics == {
        "dp_epsilon": pytest.approx(one, rel=1e-12),
        "dp_epsilon_next": pytest.approx(two, rel=1e-12),
        "dp_epsilon_budget": (one + two) / 2,
    }
    assert ledger.load() == runner.local_dp.history()
