"""The one atomic write: whole files or none, with the permissions asked for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bastion.storage import atomic_write_bytes, atomic_writer
from bastion.storage.atomic import spare_path


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


def test_reuse_keeps_the_replaced_version_and_writes_the_next_one_into_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last.bin"
    spare = spare_path(path)
    atomic_write_bytes(path, b"round one, a longer file", mode=0o600)
    with atomic_writer(path, 0o600, reuse=True) as handle:
        handle.write(b"round two")
    assert path.read_bytes() == b"round two"
    assert spare.read_bytes() == b"round one, a longer file"
    kept = spare.stat().st_ino

    with atomic_writer(path, 0o600, reuse=True) as handle:
        handle.write(b"three")

    assert path.read_bytes() == b"three"  # the longer spare was cut to what was written
    assert path.stat().st_ino == kept  # written into the spare, not a new file
    assert spare.read_bytes() == b"round two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.bin.spare", "last.bin"]


def test_a_spare_with_another_name_is_never_written_into(tmp_path: Path) -> None:
    path = tmp_path / "last.bin"
    atomic_write_bytes(path, b"round one")
    backup = tmp_path / "round-one-backup.bin"
    os.link(path, backup)  # an operator keeps round one under a name of their own
    atomic_write_bytes(path, b"round two")
    with atomic_writer(path, reuse=True) as handle:
        handle.write(b"round three")
    with atomic_writer(path, reuse=True) as handle:
        handle.write(b"round four")
    assert backup.read_bytes() == b"round one"
    assert path.read_bytes() == b"round four"


def test_a_spare_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "last.bin"
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"not ours to overwrite")
    spare_path(path).symlink_to(target)
    with atomic_writer(path, reuse=True) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"not ours to overwrite"
    assert path.read_bytes() == b"new" and not path.is_symlink()


def test_a_failed_reusing_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "last.bin"
    atomic_write_bytes(path, b"one")
    with atomic_writer(path, reuse=True) as handle:
        handle.write(b"two")
    with pytest.raises(RuntimeError), atomic_writer(path, reuse=True) as handle:
        handle.write(b"half")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"two"
    assert not list(tmp_path.glob("*.tmp"))
