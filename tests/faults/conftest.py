"""Fixtures of the fault suite: one undisturbed deterministic run, the reference model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faults.harness import FaultFederation


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
