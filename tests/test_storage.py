"""The one atomic write: whole files or none, with the permissions asked for."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bastion.storage import atomic_write_bytes, atomic_writer


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "data.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["data.bin"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write(b"half")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_private_mode_is_set(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    atomic_write_bytes(path, b"secret", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
