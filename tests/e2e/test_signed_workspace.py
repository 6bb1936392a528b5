"""Signed workspaces through the real `bastion` command, each party a separate process.

A collaborator refuses a changed workspace before it imports any task code; the aggregator
refuses a collaborator whose (validly signed) workspace differs from its own; an exported
workspace imported at each site runs the federation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_bastion
from support.workspaces import MODEL_OWNER, make_workspace

from bastion.pki import Role, init_ca, issue
from bastion.sim.processes import LocalFederation
from bastion.workspace.verify import measure, sign

#: Task code that leaves a mark when it is imported: a refusal must come before that.
MARKING_LINE = "\nimport pathlib; pathlib.Path({marker!r}).write_text('task code ran')\n"


def bastion(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_bastion(*args, cwd=cwd, columns=400, timeout=timeout)


def start_site(workspace: Path, name: str, port: int) -> subprocess.CompletedProcess[str]:
    # Port 9 (discard) on loopback: a refusal must happen before any connection is tried.
    return bastion(
        "collaborator", "start", name, "--aggregator", f"127.0.0.1:{port}", cwd=workspace
    )


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, collaborators=2)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda ws, line: (ws / "task.py").write_text((ws / "task.py").read_text() + line),
            "task.py differs",
        ),
        (lambda ws, line: (ws / "extra.py").write_text(line), "extra.py was added"),
        (lambda ws, line: (ws / "requirements.txt").unlink(), "requirements.txt is missing"),
    ],
    ids=["tampered", "added", "deleted"],
)
def test_collaborator_start_refuses_a_changed_workspace_naming_the_file(
    workspace: Path, tmp_path: Path, change: Callable[[Path, str], object], named: str
) -> None:
    marker = tmp_path / "task-code-ran"
    change(workspace, MARKING_LINE.format(marker=str(marker)))
    result = start_site(workspace, "site-1", 9)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "Refusing to run its code" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_collaborator_start_refuses_a_workspace_signed_outside_the_federation(
    workspace: Path, tmp_path: Path
) -> None:
    rogue = tmp_path / "rogue-pki"
    init_ca(rogue, common_name="Not The Federation")
    issue(rogue, MODEL_OWNER, Role.MODEL_OWNER)  # same name, another CA
    marker = tmp_path / "task-code-ran"
    task = workspace / "task.py"
    task.write_text(task.read_text() + MARKING_LINE.format(marker=str(marker)))
    measure(workspace)
    sign(workspace, rogue / f"{MODEL_OWNER}.key", rogue / f"{MODEL_OWNER}.crt", rogue / "ca.crt")

    result = start_site(workspace, "site-1", 9)
    assert result.returncode == 2, result.stderr
    assert "not a model-owner identity of this federation" in result.stderr
    assert not marker.exists()


def test_collaborator_start_refuses_an_unsigned_workspace(workspace: Path) -> None:
    (workspace / "workspace.manifest.sig").unlink()
    result = start_site(workspace, "site-1", 9)
    assert result.returncode == 2, result.stderr
    assert "the manifest is not signed" in result.stderr
    assert "--allow-unsigned-workspace" in result.stderr or "bastion workspace sign" in (
        result.stderr
    )


def import_at_site(archive: Path, site: Path, name: str, federation_pki: Path) -> Path:
    """What a data site does: import with the operator's CA, then add its own key pair."""
    result = bastion(
        "workspace",
        "import",
        str(archive),
        str(site),
        "--ca",
        str(federation_pki / "ca.crt"),
        cwd=archive.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "imported and verified" in result.stdout
    pki = site / "pki"
    pki.mkdir(mode=0o700)
    for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
        shutil.copy2(federation_pki / file, pki / file)
    return site


@pytest.mark.slow
def test_exported_workspace_runs_at_each_site_and_the_aggregator_refuses_another_one(
    workspace: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "export" / "workspace.tar.gz"
    exported = bastion("workspace", "export", str(archive), cwd=workspace)
    assert exported.returncode == 0, exported.stderr
    pki = workspace / "pki"
    sites = {
        name: import_at_site(archive, tmp_path / f"host-{name}", name, pki)
        for name in ("site-1", "site-2")
    }
    # A third copy, changed and re-signed by the model owner herself: valid, but not the
    # workspace the aggregator runs.
    other = import_at_site(archive, tmp_path / "host-other", "site-2", pki)
    task = other / "task.py"
    task.write_text(task.read_text() + "\n# another version of the task code\n")
    measure(other)
    sign(other, pki / f"{MODEL_OWNER}.key", pki / f"{MODEL_OWNER}.crt", pki / "ca.crt")

    with LocalFederation(workspace) as federation:
        port = federation.start_aggregator()
        refused = start_site(other, "site-2", port)
        assert refused.returncode == 2, refused.stderr
        assert "workspace mismatch" in refused.stderr
        sites_running = {
            name: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bastion",
                    "collaborator",
                    "start",
                    name,
                    "--aggregator",
                    f"127.0.0.1:{port}",
                ],
                cwd=site,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, site in sites.items()
        }
        outputs = {name: p.communicate(timeout=240)[0] for name, p in sites_running.items()}
        codes = {name: p.returncode for name, p in sites_running.items()}
        assert codes == {"site-1": 0, "site-2": 0}, outputs
        assert federation.wait(timeout=60) == {"aggregator": 0}, federation.log_text("aggregator")
    assert "refused site-2: its workspace measurement differs" in federation.log_text("aggregator")
    assert (workspace / "save" / "last.safetensors").exists()
