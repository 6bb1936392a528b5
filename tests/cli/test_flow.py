"""The documented command sequence, through the real `bastion` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def bastion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(cwd / ".mpl")},
    )


@pytest.mark.slow
def test_csr_flow_simulate_and_status(tmp_path: Path) -> None:
    assert (
        bastion(
            "workspace",
            "create",
            "fl",
            "--template",
            "numpy_logreg_digits",
            "-n",
            "2",
            "-r",
            "3",
            cwd=tmp_path,
        ).returncode
        == 0
    )
    ws = tmp_path / "fl"
    assert bastion("pki", "init", cwd=ws).returncode == 0
    # The multi-machine path: each member makes its key and CSR, the CA signs the CSR.
    for name, role, hosts in [
        ("aggregator", "aggregator", ["--host", "127.0.0.1"]),
        ("site-1", "collaborator", []),
        ("site-2", "collaborator", []),
    ]:
        assert bastion("pki", "request", name, "--role", role, *hosts, cwd=ws).returncode == 0
        signed = bastion("pki", "sign", f"pki/{name}.csr", "--role", role, cwd=ws)
        assert signed.returncode == 0, signed.stderr
        assert "SHA-256" in signed.stdout or "fingerprint" in signed.stdout.lower()
    listing = bastion("pki", "list", cwd=ws)
    assert all(n in listing.stdout for n in ("aggregator", "site-1", "site-2"))
    assert bastion("status", cwd=ws).stdout.count("not started") == 1
    assert bastion("plan", "initialize", cwd=ws).returncode == 0
    # The model owner measures and signs the workspace; every party verifies it at start.
    assert bastion("pki", "issue", "owner", "--role", "model-owner", cwd=ws).returncode == 0
    assert bastion("workspace", "measure", cwd=ws).returncode == 0
    signed = bastion(
        "workspace", "sign", "--key", "pki/owner.key", "--cert", "pki/owner.crt", cwd=ws
    )
    assert signed.returncode == 0, signed.stderr
    assert "owner" in signed.stdout
    run = bastion("simulate", "--plot", "logs/acc.png", "--require-improvement", cwd=ws)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "round 3" in run.stdout and "final" in run.stdout
    assert "federation finished: accuracy" in run.stdout
    assert (ws / "logs" / "acc.png").read_bytes()[:4] == b"\x89PNG"
    status = bastion("status", cwd=ws)
    assert status.returncode == 0 and "finished" in status.stdout and "site-2" in status.stdout
    state = json.loads((ws / "save" / "state.json").read_text())
    assert state["finished"] and state["round_completed"] == 3
