"""Reading a stream ahead: same items, same order, errors in place, bounded, stoppable."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bastion.transport.read_ahead import read_ahead


def test_items_arrive_in_order_and_whole() -> None:
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(read_ahead(iter([]))) == []


def test_an_error_while_reading_is_raised_in_its_place() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("the stream broke")

    seen = []
    with pytest.raises(ConnectionError, match="the stream broke"):
        for item in read_ahead(failing()):
            seen.append(item)
    assert seen == [1, 2]


def test_the_reader_stays_at_most_depth_ahead() -> None:
    read = []

    def counted() -> Iterator[int]:
        for index in range(100):
            read.append(index)
            yield index

    stream = read_ahead(counted(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)
    # taken: 0; queued: 1, 2; held by the reader waiting for room: 3
    assert len(read) <= 4
    assert list(stream) == list(range(1, 100))


def test_the_next_item_is_read_while_this_one_is_handled() -> None:
    second_read = threading.Event()

    def stream() -> Iterator[int]:
        yield 1
        second_read.set()
        yield 2

    items = read_ahead(stream())
    assert next(items) == 1
    assert second_read.wait(5)  # before the handler asked for it
    assert list(items) == [2]


def test_closing_early_stops_the_reader() -> None:
    reading = threading.Event()
    read = []

    def endless() -> Iterator[int]:
        index = 0
        while True:
            reading.set()
            read.append(index)
            yield index
            index += 1

    items = read_ahead(endless(), depth=1, name="test-read-ahead")
    assert next(items) == 0
    items.close()  # a refused upload: nothing more is read
    time.sleep(0.4)
    count = len(read)
    time.sleep(0.3)
    assert len(read) == count <= 3
    assert not any(t.name == "test-read-ahead" for t in threading.enumerate())
