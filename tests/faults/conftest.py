"""Fixtures of the fault suite (the undisturbed reference model) and its results table.

Without ``BASTION_FAULTS_FULL=1`` (``make test``) every scenario runs once, at its first
injection point; ``make faults`` runs every scenario × injection point and writes
benchmarks/results/faults.json and faults.md from what the scenarios recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from faults import results
from faults.harness import FULL, shared_model, undisturbed

_STARTED = time.monotonic()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The final model of an undisturbed run (2 sites, 3 rounds)."""
    return shared_model(tmp_path_factory, "baseline", undisturbed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Name each recorded row after its test; record a failed scenario as a FAILED row."""
    before = len(results.ROWS)
    outcome = yield
    report = outcome.get_result()
    for row in results.ROWS[before:]:
        row.test = item.nodeid
    if report.when == "call" and report.failed:
        message = str(call.excinfo.value).splitlines()[0][:160] if call.excinfo else ""
        results.ROWS.append(results.Row(item.name, "-", f"FAILED: {message}", test=item.nodeid))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A pytest-xdist worker hands its rows to the controller through the shared base temp
    folder; the controller (or a run without workers) writes the table."""
    if not FULL:
        return
    factory = session.config._tmp_path_factory  # type: ignore[attr-defined]
    worker = getattr(session.config, "workerinput", None)
    if worker is not None:
        shared = factory.getbasetemp().parent
        results.dump(shared / f"fault-rows-{worker['workerid']}.json")
        return
    for path in sorted(factory.getbasetemp().glob("fault-rows-*.json")):
        results.load(path)
    if results.ROWS:
        results.write(time.monotonic() - _STARTED)
