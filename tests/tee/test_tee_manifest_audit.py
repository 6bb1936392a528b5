"""Every file Python opens while starting ``python -m bastion`` is covered by the manifest.

The entrypoint runs as the enclave would run it (the manifest's interpreter, environment and
working directory) under an audit hook that records each ``open`` event; each opened file must
then be a trusted or allowed file, or sit under such a directory, or Gramine would refuse it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.workspaces import edit_plan, make_workspace, sign_workspace

from bastion.tee.gramine import ManifestOptions, render_manifest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

#: Installs the audit hook before anything else is imported, then runs ``-m bastion``.
WRAPPER = r"""
import sys
log = open(sys.argv[1], "w", encoding="utf-8", errors="surrogateescape", buffering=1)

def record(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = args[0].decode("utf-8", "surrogateescape") if isinstance(args[0], bytes) else args[0]
        log.write(path + "\n")

sys.addaudithook(record)
import runpy
sys.argv = ["bastion", *sys.argv[2:]]
runpy.run_module("bastion", run_name="__main__", alter_sys=True)
"""


def covered(path: str, entries: list[str]) -> bool:
    for entry in entries:
        target = entry.removeprefix("file:")
        if (target.endswith("/") and path.startswith(target)) or path == target:
            return True
    return False


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

    opened = {os.path.normpath(os.path.join(cwd, p)) for p in log.read_text().splitlines()}
    assert any(must_open in p for p in opened), f"the hook did not see {must_open} opened"
    entries = manifest["sgx"]["trusted_files"] + manifest["sgx"]["allowed_files"]
    # A failed open of a file that does not exist (e.g. pythonXY.zip) needs no manifest entry.
    uncovered = sorted(p for p in opened if os.path.exists(p) and not covered(p, entries))
    assert uncovered == []


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

    opened = {os.path.normpath(os.path.join(cwd, p)) for p in log.read_text().splitlines()}
    for expected in ("plan.yaml", "task.py", "workspace.manifest.sig", "pki/site-1.key"):
        assert str(workspace / expected) in opened, f"the hook did not see {expected} opened"
    assert any(p.endswith("digits.csv.gz") for p in opened), "the data was not loaded"
    entries = manifest["sgx"]["trusted_files"] + manifest["sgx"]["allowed_files"]
    sealed = [m["path"] + "/" for m in manifest["fs"]["mounts"] if m.get("type") == "encrypted"]
    uncovered = sorted(
        p
        for p in opened
        if os.path.exists(p) and not covered(p, entries) and not p.startswith(tuple(sealed))
    )
    assert uncovered == []
