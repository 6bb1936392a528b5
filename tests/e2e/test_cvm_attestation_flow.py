"""Mutual attestation over real processes with confidential-VM evidence: a simulated Intel TDX
aggregator and simulated AMD SEV-SNP sites, one signed plan pinning both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.workspaces import edit_plan, make_workspace, sign_workspace

from bastion.metrics.log import read_metrics
from bastion.sim.processes import LocalFederation
from bastion.tee.attestation import build_simulated_hierarchy
from bastion.tee.attestation.parties import PROVIDER_ENV, SIMULATED_MRTD_ENV
from bastion.tee.attestation.simulated_cvm import (
    SIMULATED_MRTD,
    SIMULATED_SNP_MEASUREMENT,
    build_simulated_snp_hierarchy,
)
from bastion.workspace.initialize import initialize_plan

ROGUE_MRTD = "ab" * 48
SITES = ("site-1", "site-2")


def _cvm_workspace(tmp_path: Path) -> Path:
    workspace = make_workspace(tmp_path, collaborators=2, rounds=2, initialize=False)
    keys = workspace / "pki" / "attestation-sim"
    build_simulated_hierarchy().save(keys)  # the TDX side: Intel-style PCK chain
    build_simulated_snp_hierarchy().save(keys)  # the SNP side: ARK -> ASK -> VCEK
    edit_plan(
        workspace,
        {
            "attestation": {
                "provider": "simulated-tdx",  # sites say snp through BASTION_ATTESTATION_PROVIDER
                "simulated_dir": "pki/attestation-sim",
                "policy": {
                    "required": True,
                    "allow_simulated": True,
                    "collateral": "none",
                    "tdx": {"mrtd": [SIMULATED_MRTD.hex()]},
                    "snp": {"measurement": [SIMULATED_SNP_MEASUREMENT.hex()]},
                },
            }
        },
    )
    initialize_plan(workspace)
    sign_workspace(workspace)
    return workspace


def _start(federation: LocalFederation, aggregator_env: dict[str, str]) -> None:
    federation.extra_env = aggregator_env
    federation.start_aggregator()
    federation.extra_env = {PROVIDER_ENV: "simulated-snp"}
    for name in SITES:
        federation.start_collaborator(name)
    federation.extra_env = {}


@pytest.mark.slow
def test_a_tdx_aggregator_and_snp_sites_train_together(tmp_path: Path) -> None:
    workspace = _cvm_workspace(tmp_path)
    with LocalFederation(workspace) as federation:
        _start(federation, {})
        assert federation.aggregator_process is not None
        assert federation.aggregator_process.wait(timeout=180) == 0, federation.log_text(
            "aggregator"
        )
        for name, process in federation.collaborator_processes.items():
            assert process.wait(timeout=60) == 0, federation.log_text(name)
        aggregator_log = federation.log_text("aggregator")
        site_log = federation.log_text("site-1")
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    admissions = [r for r in records if r["event"] == "attestation"]
    assert sorted(r["collaborator"] for r in admissions) == list(SITES)
    assert all(r["accepted"] and r["simulated"] and r["evidence"] == "snp" for r in admissions)
    assert all(r["mr_enclave"] == SIMULATED_SNP_MEASUREMENT.hex() for r in admissions)
    assert "aggregator attested: tdx measurement" in site_log
    assert "SIMULATED attestation" in aggregator_log
    assert any(r["event"] == "finished" for r in records)
    status = subprocess.run(
        [sys.executable, "-m", "bastion", "status", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert status.returncode == 0
    assert status.stdout.count("SIMULATED ok, SNP measurement") == 2


@pytest.mark.slow
def test_no_model_or_update_moves_when_the_aggregators_mrtd_is_not_pinned(tmp_path: Path) -> None:
    workspace = _cvm_workspace(tmp_path)
    with LocalFederation(workspace) as federation:
        _start(federation, {SIMULATED_MRTD_ENV: ROGUE_MRTD})
        for name, process in federation.collaborator_processes.items():
            assert process.wait(timeout=120) == 2, federation.log_text(name)
        assert federation.aggregator_process is not None
        assert federation.aggregator_process.poll() is None  # still waiting for attested peers
        federation.stop()
        aggregator_log = federation.log_text("aggregator")
        site_logs = [federation.log_text(n) for n in SITES]
    for log in site_logs:
        assert "error: aggregator attestation failed, nothing was sent" in log
        assert "MRTD" in log and ROGUE_MRTD in log
    # From the aggregator's side: no model was sent, no result or evidence ever arrived.
    assert "sending the round" not in aggregator_log
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    assert not [r for r in records if r["event"] in {"task", "rejected", "attestation"}]
    assert not (workspace / "save" / "last.safetensors").exists()


@pytest.mark.slow
def test_a_site_whose_measurement_is_not_pinned_gets_no_model(tmp_path: Path) -> None:
    workspace = _cvm_workspace(tmp_path)
    with LocalFederation(workspace) as federation:
        federation.start_aggregator()
        federation.extra_env = {
            PROVIDER_ENV: "simulated-snp",
            "BASTION_SIMULATED_SNP_MEASUREMENT": "cd" * 48,
        }
        for name in SITES:
            federation.start_collaborator(name)
        federation.extra_env = {}
        for name, process in federation.collaborator_processes.items():
            assert process.wait(timeout=120) != 0, federation.log_text(name)
        federation.stop()
        site_logs = [federation.log_text(n) for n in SITES]
    for log in site_logs:
        assert "the aggregator refused our attestation" in log and "MEASUREMENT" in log
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    verdicts = [r for r in records if r["event"] == "attestation"]
    assert verdicts and not any(r["accepted"] for r in verdicts)
    assert not [r for r in records if r["event"] in {"task", "rejected"}]
    assert not (workspace / "save" / "last.safetensors").exists()
