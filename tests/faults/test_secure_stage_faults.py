"""kill -9 of the aggregator at each secure-aggregation stage of round 2, then a restart.

The restarted aggregator resumes from round 1's checkpoint and opens round 2 afresh; the
collaborators drop the session the dead aggregator held and take part in the new one. The
sum is exact (fixed point, masks cancel), so the final model equals an undisturbed secure run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
from faults.harness import FaultFederation, full_only, shared_model, undisturbed
from faults.results import record

SECURE = {
    "secure_aggregation": {"stage_seconds": 30},
    "tasks": [
        {"name": "validate_global", "kind": "validate", "model": "global"},
        {"name": "train", "kind": "train", "args": {"epochs": 1, "batch_size": 16, "lr": 0.2}},
    ],
}
SITES = 3


@pytest.fixture(scope="module")
def secure_baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    return shared_model(
        tmp_path_factory,
        "secure-baseline",
        lambda root: undisturbed(root, collaborators=SITES, plan_changes=SECURE),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    ["share_keys", *full_only("advertise_keys", "masked_input", "consistency_check", "unmasking")],
)
def test_aggregator_killed_at_secure_stage_resumes_to_same_model(
    tmp_path: Path, secure_baseline: dict[str, np.ndarray], stage: str
) -> None:
    run = FaultFederation(tmp_path, collaborators=SITES, plan_changes=SECURE)
    # Round 2's first message of the stage (each site sends one per stage per round).
    fault = f"secure.{stage}:kill:{SITES + 1}"
    try:
        port = run.start(aggregator_fault=fault)
        run.wait_fired(f"secure.{stage}", timeout=180)
        assert run.wait_exit("aggregator") == -signal.SIGKILL
        killed = time.monotonic()
        run.start_aggregator(port=port)
        codes = run.finish(timeout=240)
        run.assert_invariants(codes, secure_baseline)
        record(
            "aggregator kill -9, secure aggregation (3 sites)",
            fault,
            "finished, = undisturbed secure run",
            run.lost_rounds(),
            time.monotonic() - killed,
        )
    finally:
        run.close()
