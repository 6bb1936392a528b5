"""The Gramine minimum (1.8: `loader.entrypoint.uri`) is checked before a build, in one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bastion.tee.gramine_build import build_steps, run_build_steps
from bastion.tee.gramine_version import (
    MINIMUM_GRAMINE,
    GramineTooOld,
    installed_gramine_version,
    parse_version,
    require_gramine,
)


def fake_gramine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str | None) -> Path:
    """gramine-manifest and gramine-sgx-sign whose interpreter reports ``version``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "gramine-python"
    answer = (
        f"echo {version}; exit 0" if version else "echo 'No module named graminelibos' >&2; exit 1"
    )
    python.write_text(f'#!/bin/sh\nif [ "$1" = -c ]; then {answer}; fi\nexec /bin/sh "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    for tool, body in {"gramine-manifest": 'cp "$1" "$2"', "gramine-sgx-sign": "exit 0"}.items():
        script = bin_dir / tool
        script.write_text(f"#!{python}\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    return bin_dir


@pytest.mark.parametrize(
    ("text", "version"),
    [("1.8", (1, 8)), ("1.9post~UNRELEASED", (1, 9)), ("v1.10\n", (1, 10)), ("unknown", None)],
)
def test_versions_are_parsed(text: str, version: tuple[int, int] | None) -> None:
    assert parse_version(text) == version


def test_the_minimum_is_1_8() -> None:
    assert MINIMUM_GRAMINE == (1, 8)


def test_the_installed_version_is_read_with_gramines_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gramine(tmp_path, monkeypatch, "1.9")
    assert installed_gramine_version() == (1, 9)
    assert require_gramine() == (1, 9)


def test_gramine_1_7_is_refused_in_one_line_before_any_tool_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gramine(tmp_path, monkeypatch, "1.7")
    (tmp_path / "bastion.manifest.template").write_text("x = 1\n")
    with pytest.raises(GramineTooOld) as caught:
        run_build_steps(build_steps(key=tmp_path / "k.pem"), tmp_path)
    message = str(caught.value)
    assert "Gramine 1.7 is installed" in message and ">= 1.8" in message and "\n" not in message
    assert not (tmp_path / "bastion.manifest").exists()


def test_an_unknown_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gramine(tmp_path, monkeypatch, None)
    with pytest.raises(GramineTooOld, match="cannot tell the installed Gramine's version"):
        require_gramine()


def test_gramine_1_8_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gramine(tmp_path, monkeypatch, "1.8")
    (tmp_path / "bastion.manifest.template").write_text("x = 1\n")
    run_build_steps(build_steps(key=tmp_path / "k.pem"), tmp_path)
    assert (tmp_path / "bastion.manifest").read_text() == "x = 1\n"
