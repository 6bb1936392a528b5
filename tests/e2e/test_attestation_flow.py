"""Mutual remote attestation over real processes, with the simulated evidence provider."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.workspaces import edit_plan, make_workspace, sign_workspace

from bastion.metrics.log import read_metrics
from bastion.sim.processes import LocalFederation
from bastion.tee.attestation import build_simulated_hierarchy
from bastion.tee.attestation.parties import SIMULATED_MRSIGNER_ENV, SIMULATED_SIGNER_LABEL
from bastion.workspace.initialize import initialize_plan

FEDERATION_SIGNER = hashlib.sha256(SIMULATED_SIGNER_LABEL).hexdigest()
ROGUE_SIGNER = "ab" * 32


def _attested_workspace(tmp_path: Path) -> Path:
    workspace = make_workspace(tmp_path, collaborators=2, rounds=2, initialize=False)
    build_simulated_hierarchy().save(workspace / "pki" / "attestation-sim")
    edit_plan(
        workspace,
        {
            "attestation": {
                "provider": "simulated",
                "simulated_dir": "pki/attestation-sim",
                # Pin the signer, product and minimum SVN: an enclave cannot pin its own
                # MRENCLAVE in a plan that is itself part of the measurement.
                "policy": {
                    "required": True,
                    "mrsigner": FEDERATION_SIGNER,
                    "isv_prod_id": 0,
                    "min_isv_svn": 0,
                    "allow_simulated": True,
                    "collateral": "none",
                },
            }
        },
    )
    initialize_plan(workspace)
    sign_workspace(workspace)
    return workspace


@pytest.mark.slow
def test_federation_runs_when_every_party_satisfies_the_policy(tmp_path: Path) -> None:
    workspace = _attested_workspace(tmp_path)
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=180)
        aggregator_log = federation.log_text("aggregator")
        collaborator_log = federation.log_text("site-1")
    assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, aggregator_log + collaborator_log
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    admissions = [r for r in records if r["event"] == "attestation"]
    assert sorted(r["collaborator"] for r in admissions) == ["site-1", "site-2"]
    assert all(r["accepted"] and r["simulated"] for r in admissions)
    assert "SIMULATED attestation" in aggregator_log and "SIMULATED attestation" in collaborator_log
    assert "aggregator attested" in collaborator_log
    assert any(r["event"] == "finished" for r in records)
    status = subprocess.run(
        [sys.executable, "-m", "bastion", "status", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert status.returncode == 0
    assert status.stdout.count("SIMULATED ok") == 2


@pytest.mark.slow
def test_no_model_or_update_moves_when_the_aggregator_is_not_in_the_policy(tmp_path: Path) -> None:
    workspace = _attested_workspace(tmp_path)
    with LocalFederation(workspace) as federation:
        federation.extra_env = {SIMULATED_MRSIGNER_ENV: ROGUE_SIGNER}  # the aggregator only
        federation.start_aggregator()
        federation.extra_env = {}
        for name in ("site-1", "site-2"):
            federation.start_collaborator(name)
        for name, process in federation.collaborator_processes.items():
            assert process.wait(timeout=120) == 2, federation.log_text(name)
        assert federation.aggregator_process is not None
        assert federation.aggregator_process.poll() is None  # still waiting for attested peers
        federation.stop()
        aggregator_log = federation.log_text("aggregator")
        collaborator_logs = [federation.log_text(n) for n in ("site-1", "site-2")]
    for log in collaborator_logs:
        assert "error: aggregator attestation failed, nothing was sent" in log
        assert "mrsigner" in log.lower()
    # From the aggregator's side: no model was sent, no result or evidence ever arrived.
    assert "sending the round" not in aggregator_log
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    assert not [r for r in records if r["event"] in {"task", "rejected", "attestation"}]
    assert not (workspace / "save" / "last.safetensors").exists()
