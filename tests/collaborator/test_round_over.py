"""A site late for a round that closed without it moves on to the next round.

Found by tests/faults/test_network_faults.py (partition longer than the round timeout, which
failed about one run in three): a site that fetched round 1's tasks, then reached the
aggregator after round 1 had timed out, was refused its model with PERMISSION_DENIED and
exited for good, so every later round waited out its timeout and the final evaluation ran
without it. A stale round is now ``RoundOver`` (gRPC ABORTED): the site asks for its next task.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from collaborator.test_loop import SHARD, TASKS, RecordingRunner, ScriptedAggregator

from bastion.collaborator.loop import Collaborator
from bastion.protocol import Assignment, NotAssigned, RoundOver
from bastion.tensors import Weights
from bastion.transport.client import GrpcAggregatorClient
from bastion.transport.server import status_for


class LateForRoundOne(ScriptedAggregator):
    def get_model(self, round_number: int) -> Weights:
        if round_number == 1:
            raise RoundOver("a asked for round 1, but the current round is 2")
        return super().get_model(round_number)


def test_the_loop_drops_a_closed_round_and_takes_the_next() -> None:
    aggregator = LateForRoundOne(
        [Assignment("run", 1, TASKS), Assignment("run", 2, TASKS), Assignment("done")]
    )
    collaborator = Collaborator(
        "a", aggregator, RecordingRunner(), SHARD, retryable=(), sleep=lambda s: None
    )
    collaborator.run()
    assert {round_number for round_number, _, _ in aggregator.sent} == {2}
    assert collaborator.rounds_run == 1


def test_stale_rounds_are_round_over_and_others_stay_refusals(tmp_path: Path) -> None:
    from aggregator.test_rounds import Clock, _aggregator, _work

    clock = Clock()
    aggregator = _aggregator(tmp_path, clock)
    _work(aggregator, "a", 1.0, 1, 0.5)
    _work(aggregator, "b", 3.0, 1, 0.5)
    clock.now = 11.0
    aggregator.check_timeout()  # round 1 closes without c
    assert aggregator.current_round == 2
    with pytest.raises(RoundOver):
        aggregator.model_frames("c", 1)
    with pytest.raises(RoundOver):
        aggregator.check_result_allowed("c", 1, "train")
    for never_given in (0, 3, 7):  # a round nobody was given is still a plain refusal
        with pytest.raises(NotAssigned) as caught:
            aggregator.model_frames("c", never_given)
        assert not isinstance(caught.value, RoundOver)


class _Aborted(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.ABORTED

    def details(self) -> str:
        return "a asked for round 1, but the current round is 2"


def test_round_over_travels_as_aborted_and_back() -> None:
    assert status_for(RoundOver("late")) is grpc.StatusCode.ABORTED
    assert status_for(NotAssigned("never")) is grpc.StatusCode.PERMISSION_DENIED
    client = GrpcAggregatorClient.__new__(GrpcAggregatorClient)
    error = client._translate(_Aborted(), "the model of round 1")
    assert isinstance(error, RoundOver), error
