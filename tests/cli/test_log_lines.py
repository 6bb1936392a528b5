"""What a role's log looks like when it goes to a file: one dated line per record."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from bastion.cli.console import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_log_file_gets_whole_dated_lines(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging()  # stderr is captured here: not a terminal, as under systemd or a file
    long_reason = "the round's model differs from the plan's " * 6
    logging.getLogger("bastion.aggregator").info("refused %s: %s", "site-2", long_reason)
    logging.getLogger("bastion.aggregator").debug("not shown without --verbose")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1  # never wrapped at a terminal's width, whatever its length
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO bastion\.aggregator: refused site-2: "
        + re.escape(long_reason),
        lines[0],
    )
    assert "\x1b[" not in lines[0]  # no terminal colours in a file


def test_verbose_logs_debug_records(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(verbose=True)
    logging.getLogger("bastion.transport").debug("heartbeat not delivered")
    assert "DEBUG bastion.transport: heartbeat not delivered" in capsys.readouterr().err
