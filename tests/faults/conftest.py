"""Fixtures of the fault suite: one undisturbed deterministic run, the reference model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faults.harness import FULL, FaultFederation


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The final model of an undisturbed run (2 sites, 3 rounds)."""
    run = FaultFederation(Path(tmp_path_factory.mktemp("baseline")))
    try:
        run.start()
        codes = run.finish()
        run.assert_invariants(codes)
        return run.final_model()
    finally:
        run.close()


#: What `make test` runs of this suite (on 2 cores, a few minutes): the unit-level checks
#: and one real federation per kind of fault. `make faults` (BASTION_FAULTS_FULL=1) runs all.
FAST = (
    "test_checkpoint_temporaries.py::",
    "test_engine_storage_errors.py::",
    "test_transient_dial.py::",
    "test_process_faults.py::test_aggregator_killed_at_point_resumes_to_same_model"
    "[atomic.before_rename@last.safetensors:kill:2]",
    "test_network_faults.py::test_partition_longer_than_round_timeout_then_heal",
    "test_resource_faults.py::test_disk_full_at_checkpoint_stops_with_one_reason_and_resumes"
    "[engine.checkpoint:enospc:2]",
    "test_hostile_traffic.py::test_flood_without_certificates",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    skip = pytest.mark.skip(reason="runs in `make faults` (make test runs one case per kind)")
    for item in items:
        if "tests/faults/" in item.nodeid and not any(key in item.nodeid for key in FAST):
            item.add_marker(skip)
