"""Every file Python opens while starting ``python -m bastion`` is covered by the manifest.

The entrypoint runs as the enclave would run it (the manifest's interpreter, environment and
working directory) under an audit hook that records each ``open`` event; each opened file must
then be a trusted or allowed file, or sit under such a directory, or Gramine would refuse it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.audit import WRAPPER, opened_paths, uncovered
from support.workspaces import edit_plan, make_workspace, sign_workspace

from bastion.tee.gramine import ManifestOptions, render_manifest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")


@pytest.mark.parametrize(
    ("args", "must_open"),
    [(["--help"], "/bastion/cli/"), (["plan", "validate"], "/ws/plan.yaml")],
)
def test_files_opened_by_the_entrypoint_are_trusted_or_allowed(
    args: list[str], must_open: str, tmp_path: Path
) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    manifest: dict[str, Any] = tomllib.loads(
        render_manifest(ManifestOptions(workspace=workspace, role="aggregator"))
    )
    env = dict(manifest["loader"]["env"])
    env["HOME"] = str(tmp_path / "home")  # the enclave's HOME is its tmpfs; keep ours out of ~
    log = tmp_path / "opened.txt"
    cwd = manifest["fs"]["start_dir"]

    result = subprocess.run(
        [manifest["libos"]["entrypoint"], "-c", WRAPPER, str(log), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    opened = opened_paths(log.read_text(), cwd)
    assert any(must_open in p for p in opened), f"the hook did not see {must_open} opened"
    # A failed open of a file that does not exist (e.g. pythonXY.zip) needs no manifest entry.
    assert uncovered(opened, manifest) == []


def test_a_collaborator_starting_in_the_enclave_opens_only_covered_files(tmp_path: Path) -> None:
    """The real start path: verify the signed workspace, read the sealed PKI, import the task
    code, load the data, dial the aggregator (absent here, so it gives up after a second)."""
    workspace = make_workspace(tmp_path, collaborators=1)
    edit_plan(workspace, {"timeouts": {"reconnect_give_up_seconds": 1}})
    sign_workspace(workspace)
    options = ManifestOptions(
        workspace=workspace,
        role="collaborator",
        args=("collaborator", "start", "site-1", "--aggregator", "127.0.0.1:9"),
        seal_checkpoints=False,
    )
    manifest: dict[str, Any] = tomllib.loads(render_manifest(options))
    env = dict(manifest["loader"]["env"])
    env["HOME"] = str(tmp_path / "home")
    log = tmp_path / "opened.txt"
    cwd = manifest["fs"]["start_dir"]
    result = subprocess.run(
        [manifest["libos"]["entrypoint"], "-c", WRAPPER, str(log), *manifest["loader"]["argv"][3:]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "unreachable" in result.stderr, result.stderr[-3000:]

    opened = opened_paths(log.read_text(), cwd)
    for expected in ("plan.yaml", "task.py", "workspace.manifest.sig", "pki/site-1.key"):
        assert str(workspace / expected) in opened, f"the hook did not see {expected} opened"
    assert any(p.endswith("digits.csv.gz") for p in opened), "the data was not loaded"
    assert uncovered(opened, manifest) == []
