"""The collaborator's heartbeat: beats while a round's tasks run, for that round, from one
thread that lives as long as the collaborator."""

from __future__ import annotations

import threading
import time

from bastion.collaborator.loop import Heartbeat

INTERVAL = 0.02


class Beats:
    """Stands in for the aggregator client: records each heartbeat's round."""

    def __init__(self) -> None:
        self.rounds: list[int] = []
        self._arrived = threading.Condition()

    def heartbeat(self, round_number: int) -> int:
        with self._arrived:
            self.rounds.append(round_number)
            self._arrived.notify_all()
        return round_number

    def wait_for(self, count: int) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.rounds) >= count, timeout=10)


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bastion-heartbeat"]


def test_beats_name_the_running_round_and_stop_with_it() -> None:
    client = Beats()
    heartbeat = Heartbeat(client, INTERVAL)  # type: ignore[arg-type]
    try:
        heartbeat.start(3)
        client.wait_for(2)
        heartbeat.stop()
        stopped_at = len(client.rounds)
        time.sleep(10 * INTERVAL)
        # a beat already on its way when stop() ran may still land; none starts after it
        assert len(client.rounds) <= stopped_at + 1
        assert set(client.rounds) == {3}

        heartbeat.start(4)
        client.wait_for(len(client.rounds) + 2)
        heartbeat.stop()
        assert client.rounds[-1] == 4
        assert len(heartbeat_threads()) == 1  # the same thread served both rounds
    finally:
        heartbeat.close()
    assert heartbeat_threads() == []


def test_no_interval_means_no_thread_and_no_beats() -> None:
    client = Beats()
    heartbeat = Heartbeat(client, None)  # type: ignore[arg-type]
    heartbeat.start(1)
    time.sleep(5 * INTERVAL)
    heartbeat.stop()
    heartbeat.close()
    assert client.rounds == []
    assert heartbeat_threads() == []


def test_an_unreachable_aggregator_does_not_end_the_beats() -> None:
    class Flaky(Beats):
        def heartbeat(self, round_number: int) -> int:
            super().heartbeat(round_number)
            raise OSError("connection refused")

    client = Flaky()
    heartbeat = Heartbeat(client, INTERVAL)  # type: ignore[arg-type]
    try:
        heartbeat.start(7)
        client.wait_for(3)  # each failed beat is logged at debug level, and the next one comes
    finally:
        heartbeat.stop()
        heartbeat.close()


def test_closing_during_a_round_ends_the_thread() -> None:
    client = Beats()
    heartbeat = Heartbeat(client, INTERVAL)  # type: ignore[arg-type]
    heartbeat.start(5)
    client.wait_for(1)
    heartbeat.close()  # the collaborator ends mid-round (an error in its task loop)
    assert heartbeat_threads() == []
