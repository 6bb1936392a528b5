"""A round protocol and an observer defined only here plug into the engine without any edit
to Bastion, and take part in a real round: the aggregator serves gRPC over mutual TLS in this
process, the collaborators are separate processes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support.workspaces import make_workspace

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.events import (
    FederationFinished,
    ResultAccepted,
    RoundClosed,
    RoundEvent,
    RoundObserver,
    RoundStarted,
)
from bastion.aggregator.round_protocol import RoundContext
from bastion.aggregator.service import run_aggregator
from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation
from bastion.spec.tasks import TaskSpec
from bastion.tensors import Weights


class EqualVoteRound:
    """A toy protocol: every training result counts once, whatever its example count."""

    opened: list[int] = []
    results: list[tuple[int, str, str, int]] = []

    def __init__(self, context: RoundContext) -> None:
        self._strategy = context.strategy
        self._round = context.progress.number
        EqualVoteRound.opened.append(self._round)

    def refusal(self, collaborator: str, task: TaskSpec) -> str | None:
        return None

    def on_result(
        self, collaborator: str, task: TaskSpec, example_count: int, weights: Weights | None
    ) -> None:
        EqualVoteRound.results.append((self._round, collaborator, task.name, example_count))
        if task.kind == "train":
            assert weights is not None
            self._strategy.accumulate(collaborator, weights, 1.0)

    def exclude(self, collaborator: str, reason: str) -> None:
        return None

    def is_settled(self) -> bool:
        return True

    def blocks_timeout(self) -> bool:
        return False

    def closes_late_round(self) -> bool:
        return False

    def close(self, summary: dict[str, dict[str, float]]) -> None:
        summary.setdefault("votes", {})["count"] = float(
            sum(1 for r in EqualVoteRound.results if r[0] == self._round and r[2] == "train")
        )


class EventLog(RoundObserver):
    """A toy observer: keeps every event, and adds a field to each round's record."""

    def __init__(self) -> None:
        self.events: list[RoundEvent] = []

    def notify(self, event: RoundEvent) -> None:
        self.events.append(event)

    def round_fields(self, closed: RoundClosed) -> dict[str, object]:
        return {"seen_by_toy_observer": len(self.events)}

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.mark.slow
def test_a_toy_protocol_and_observer_receive_a_real_multi_process_round(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2, rounds=2)
    observer = EventLog()
    port_file = tmp_path / "port"
    served: dict[str, object] = {}

    def serve() -> None:
        served["aggregator"] = run_aggregator(
            workspace, port=0, port_file=port_file, protocol=EqualVoteRound, observers=[observer]
        )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with LocalFederation(workspace) as federation:
        deadline = threading.Event()
        while not port_file.exists() and thread.is_alive():
            deadline.wait(0.05)
        federation.port = int(port_file.read_text())
        for name in ("site-1", "site-2"):
            federation.start_collaborator(name)
        thread.join(timeout=240)
        assert not thread.is_alive(), federation.log_text("site-1")
        codes = {name: p.wait(timeout=60) for name, p in federation.collaborator_processes.items()}
    assert codes == {"site-1": 0, "site-2": 0}

    # The protocol was opened for both training rounds and the final evaluation (round 3),
    # and took every result: two sites x (validate_global, train, validate_local) x 2 rounds.
    assert EqualVoteRound.opened == [1, 2, 3]
    trains = [r for r in EqualVoteRound.results if r[2] == "train"]
    assert sorted((r[0], r[1]) for r in trains) == [
        (1, "site-1"),
        (1, "site-2"),
        (2, "site-1"),
        (2, "site-2"),
    ]
    assert all(count > 0 for *_, count in trains)

    # The observer saw the same round as the metrics log did, in order.
    started = [(e.round, e.final_evaluation) for e in observer.of(RoundStarted)]
    assert started == [(1, False), (2, False), (3, True)]
    accepted = observer.of(ResultAccepted)
    assert len(accepted) == len(EqualVoteRound.results) == 2 * 3 * 2 + 2
    assert [c.accepted for c in observer.of(RoundClosed)] == [2, 2, 0]
    assert observer.of(FederationFinished)[0].rounds == 2
    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    assert [s["tasks"]["votes"]["count"] for s in summaries[:2]] == [2.0, 2.0]
    assert all(s["seen_by_toy_observer"] > 0 for s in summaries)

    aggregator = served["aggregator"]
    assert isinstance(aggregator, Aggregator) and aggregator.finished.is_set()
    assert aggregator.state.round_completed == 2
