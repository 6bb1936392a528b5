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


#: What `make test` runs of this suite: the unit-level checks. The real federations under
#: faults run in `make faults` (BASTION_FAULTS_FULL=1): they take minutes on 2 cores.
FAST = (
    "test_checkpoint_temporaries.py::",
    "test_engine_storage_errors.py::",
    "test_transient_dial.py::",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    skip = pytest.mark.skip(reason="a federation under faults: runs in `make faults`")
    for item in items:
        if "tests/faults/" in item.nodeid and not any(key in item.nodeid for key in FAST):
            item.add_marker(skip)
