"""The initial model is covered by the signed manifest (issue 15, M3)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from support.cli import run_bastion
from support.workspaces import make_workspace

from bastion.plan import load_plan
from bastion.storage.checkpoints import load_checkpoint, save_checkpoint
from bastion.workspace.archive import export_workspace
from bastion.workspace.compare import WorkspaceTampered
from bastion.workspace.manifest import read_manifest
from bastion.workspace.verify import verify_workspace

INITIAL = "save/initial.safetensors"


def _swapped_model(path: Path, tmp: Path) -> bytes:
    weights, metadata = load_checkpoint(path)
    other = tmp / "other.safetensors"
    save_checkpoint(other, {k: np.full_like(v, 7.0) for k, v in weights.items()}, metadata)
    return other.read_bytes()


def test_the_manifest_lists_the_initial_model(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2)
    manifest, _ = read_manifest(workspace)
    assert INITIAL in manifest.shipped and INITIAL not in manifest.files


def test_a_swapped_initial_model_is_refused_at_start(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2)
    (workspace / INITIAL).write_bytes(_swapped_model(workspace / INITIAL, tmp_path))
    with pytest.raises(WorkspaceTampered, match="save/initial.safetensors differs"):
        verify_workspace(workspace, load_plan(workspace))


def test_a_swapped_initial_model_is_refused_at_import(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2)
    archive = export_workspace(workspace, tmp_path / "ws.tar.gz").archive
    swapped = _swapped_model(workspace / INITIAL, tmp_path)
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(archive) as source, tarfile.open(hostile, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member)
            body = swapped if member.name == INITIAL else (data.read() if data else b"")
            member.size = len(body)
            target.addfile(member, io.BytesIO(body))
    result = run_bastion(
        "workspace",
        "import",
        str(hostile),
        str(tmp_path / "site"),
        "--ca",
        str(workspace / "pki" / "ca.crt"),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "save/initial.safetensors differs" in result.stdout + result.stderr
