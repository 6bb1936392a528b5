"""The idle watch cuts a stream only when its peer keeps the server waiting, never while the
server itself works (an honest site's result was once cut while the round it completed was
closing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bastion.errors import ProtocolError
from bastion.transport.limits import PeerStreams, StreamLimits

IDLE = 0.2


class FakeContext:
    """What the watch uses of a gRPC servicer context; a cancel wakes the blocked read."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def is_active(self) -> bool:
        return not self.cancelled.is_set()


@pytest.fixture
def streams() -> Iterator[PeerStreams]:
    watch = PeerStreams(StreamLimits(idle_timeout=IDLE, receive_deadline=30.0))
    yield watch
    watch.close()


def _peer(context: FakeContext, pauses: list[float]) -> Iterator[int]:
    """A client stream: one message after each pause; an RPC error once cancelled."""
    for index, pause in enumerate(pauses):
        if context.cancelled.wait(pause):
            raise RuntimeError("cancelled")  # what gRPC's request iterator does, roughly
        yield index


def test_the_servers_own_work_between_messages_is_not_idleness(streams: PeerStreams) -> None:
    context = FakeContext()
    with streams.stream("site-1", "01", context, "a result") as watched:  # type: ignore[arg-type]
        got = []
        for message in streams.received(watched, _peer(context, [0.0, 0.0, 0.0])):
            time.sleep(4 * IDLE)  # folding a chunk, or closing the round it completes
            got.append(message)
        time.sleep(4 * IDLE)  # the last message is in: answering takes the server a while
    assert got == [0, 1, 2]
    assert not context.cancelled.is_set() and watched.expired is None


def test_a_peer_that_sends_nothing_is_cut_with_the_reason(streams: PeerStreams) -> None:
    context = FakeContext()
    silent = _peer(context, [0.0, 30.0])
    with (
        streams.stream("mallory", "02", context, "a result") as watched,  # type: ignore[arg-type]
        pytest.raises(ProtocolError, match="idle for more than 0.2s"),
    ):
        list(streams.received(watched, silent))
    assert context.cancelled.is_set()


def test_a_peer_that_stops_reading_is_cut(streams: PeerStreams) -> None:
    context = FakeContext()
    with streams.stream("site-2", "03", context, "a model download") as watched:  # type: ignore[arg-type]
        outgoing = streams.sent(watched, iter(range(3)))
        assert next(outgoing) == 0  # gRPC took one message, then the peer stopped reading
        assert context.cancelled.wait(10 * IDLE)
    assert watched.expired is not None and "idle" in watched.expired
