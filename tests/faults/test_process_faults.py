"""Process faults: kill -9 / SIGSTOP of the aggregator or a collaborator at each named point."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from faults.harness import FaultFederation, full_only
from faults.results import record

# Injection point (with the hit that fires: round 2's, after round 1 closed cleanly).
AGGREGATOR_POINTS = [
    "atomic.before_rename@last.safetensors:kill:2",  # temp written and fsynced, not renamed
    # checkpoint renamed, directory not fsynced: the round closed, its summary must be there
    "atomic.after_rename@last.safetensors:kill:2",
    *full_only(
        "engine.checkpoint:kill:2",  # round 2 aggregated and summarized, not checkpointed
        "engine.assign:kill:3",  # opening round 3 (round 1 was assigned at startup)
        "engine.download:kill:3",  # serving round 2's model
        "engine.upload:kill:2",  # a round-2 result being taken in (validate_global)
        "engine.aggregate:kill:2",  # round 2 closing, before the strategy's finalize
        "atomic.before_fsync@last.safetensors:kill:2",  # temp written, not fsynced
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", AGGREGATOR_POINTS)
def test_aggregator_killed_at_point_resumes_to_same_model(
    tmp_path: Path, baseline: dict[str, np.ndarray], fault: str
) -> None:
    run = FaultFederation(tmp_path)
    try:
        port = run.start(aggregator_fault=fault)
        run.wait_fired(fault.split(":")[0].split("@")[0])
        assert run.wait_exit("aggregator") == -signal.SIGKILL
        killed = time.monotonic()
        run.start_aggregator(port=port)  # same port; collaborators retry with backoff
        codes = run.finish()
        recovered = time.monotonic() - killed
        run.assert_invariants(codes, baseline)
        record("aggregator kill -9", fault, "finished, = undisturbed", run.lost_rounds(), recovered)
    finally:
        run.close()


COLLABORATOR_POINTS = [
    "collaborator.upload:kill:2",  # round 2 trained, result not sent
    *full_only("collaborator.downloaded:kill:2"),  # round 2's model just downloaded
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", COLLABORATOR_POINTS)
def test_collaborator_killed_at_point_restarts_to_same_model(
    tmp_path: Path, baseline: dict[str, np.ndarray], fault: str
) -> None:
    run = FaultFederation(tmp_path)
    try:
        run.start_aggregator()
        run.watcher.start()
        run.start_collaborator("site-1", fault=fault)
        run.start_collaborator("site-2")
        run.wait_fired(fault.split(":")[0])
        assert run.wait_exit("site-1") == -signal.SIGKILL
        killed = time.monotonic()
        run.start_collaborator("site-1")
        codes = run.finish()
        run.assert_invariants(codes, baseline)
        recovered = time.monotonic() - killed
        record(
            "collaborator kill -9 + restart",
            fault,
            "finished, = undisturbed",
            run.lost_rounds(),
            recovered,
        )
    finally:
        run.close()


@pytest.mark.slow
def test_aggregator_stopped_mid_upload_then_continued(
    tmp_path: Path, baseline: dict[str, np.ndarray]
) -> None:
    """SIGSTOP while a result is in flight (longer than the collaborators' first retries)."""
    run = FaultFederation(tmp_path)
    try:
        run.start(aggregator_fault="engine.upload:stop:3")
        run.wait_fired("engine.upload")
        process = run.federation.aggregator_process
        assert process is not None
        time.sleep(3.0)  # the fault is the pause itself
        os.kill(process.pid, signal.SIGCONT)
        continued = time.monotonic()
        codes = run.finish()
        run.assert_invariants(codes, baseline)
        record(
            "aggregator SIGSTOP 3 s + SIGCONT",
            "engine.upload:stop:3",
            "finished, = undisturbed",
            run.lost_rounds(),
            time.monotonic() - continued,
        )
    finally:
        run.close()
