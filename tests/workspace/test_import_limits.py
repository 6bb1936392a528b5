"""Import limits default to a multiple of the workspace's declared size (issue 15)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from support.workspaces import make_workspace

from bastion.workspace.archive import (
    DEFAULT_MAX_TOTAL_BYTES,
    ArchiveError,
    declared_limits,
    export_workspace,
    import_workspace,
)


def _with_extra(archive: Path, target: Path, name: str, size: int) -> Path:
    with tarfile.open(archive) as source, tarfile.open(target, "w:gz") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        extra = tarfile.TarInfo(name)
        extra.size = size
        out.addfile(extra, io.BytesIO(bytes(size)))
    return target


def test_limits_come_from_the_declared_size(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2)
    archive = export_workspace(workspace, tmp_path / "ws.tar.gz").archive
    limits = declared_limits(archive)
    assert limits.max_total_bytes < 4 << 20 < DEFAULT_MAX_TOTAL_BYTES
    assert import_workspace(archive, tmp_path / "site").is_dir()


def test_an_archive_far_larger_than_it_declares_is_refused(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2)
    archive = export_workspace(workspace, tmp_path / "ws.tar.gz").archive
    hostile = _with_extra(archive, tmp_path / "big.tar.gz", "data.bin", 16 << 20)
    with pytest.raises(ArchiveError, match="over the limit"):
        import_workspace(hostile, tmp_path / "site")
    assert not (tmp_path / "site").exists()
