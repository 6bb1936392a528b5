"""Broken plans and arguments: one clear line, exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.workspaces import edit_plan, make_workspace


def bastion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(
        tmp_path_factory.mktemp("base"), collaborators=2, rounds=1, initialize=False
    )


def _copy(base: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "ws"
    shutil.copytree(base, target)
    return target


def _set_text(text: str) -> Callable[[Path], None]:
    return lambda ws: (ws / "plan.yaml").write_text(text)


PLAN_BREAKAGES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "unknown key": (
        lambda ws: edit_plan(ws, {"roundz": 3}),
        ["plan", "validate"],
        "unknown key 'roundz'",
    ),
    "wrong type": (
        lambda ws: edit_plan(ws, {"rounds": "ten"}),
        ["plan", "validate"],
        "key 'rounds'",
    ),
    "nested unknown key": (
        lambda ws: edit_plan(ws, {"network": {"prot": 1}}),
        ["plan", "validate"],
        "unknown key 'network.prot'",
    ),
    "invalid yaml": (
        _set_text("name: [unclosed\nrounds: 2\n"),
        ["plan", "validate"],
        "invalid YAML at line",
    ),
    "not a mapping": (_set_text("- just\n- a list\n"), ["plan", "validate"], "must be a mapping"),
    "missing task module": (
        lambda ws: edit_plan(ws, {"task_runner": {"path": "no_such_module:build"}}),
        ["plan", "initialize"],
        "key 'task_runner.path': no module 'no_such_module'",
    ),
    "unknown strategy": (
        lambda ws: edit_plan(ws, {"aggregation": {"strategy": "fedmagic"}}),
        ["plan", "initialize"],
        "unknown strategy 'fedmagic'",
    ),
    "bad partition method": (
        lambda ws: edit_plan(ws, {"data": {"partition": {"method": "random"}}}),
        ["plan", "validate"],
        "key 'data.partition.method'",
    ),
    "port out of range": (
        lambda ws: edit_plan(ws, {"network": {"port": 70000}}),
        ["aggregator", "start"],
        "key 'network.port'",
    ),
    "duplicate collaborators": (
        lambda ws: edit_plan(ws, {"collaborators": ["site-1", "site-1"]}),
        ["plan", "validate"],
        "collaborator names must be unique",
    ),
}


def _assert_one_clear_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(PLAN_BREAKAGES))
def test_broken_plan_gives_one_clear_line(case: str, base: Path, tmp_path: Path) -> None:
    workspace = _copy(base, tmp_path)
    breakage, command, expected = PLAN_BREAKAGES[case]
    breakage(workspace)
    _assert_one_clear_line(bastion(*command, "--workspace", str(workspace), cwd=tmp_path), expected)


def test_collaborator_not_on_roster(base: Path, tmp_path: Path) -> None:
    result = bastion("collaborator", "start", "site-9", "--workspace", str(base), cwd=tmp_path)
    _assert_one_clear_line(result, "'site-9' is not on the plan's roster")


def test_collaborator_without_certificate(base: Path, tmp_path: Path) -> None:
    workspace = _copy(base, tmp_path)
    (workspace / "pki" / "site-2.crt").unlink()
    result = bastion("collaborator", "start", "site-2", "--workspace", str(workspace), cwd=tmp_path)
    _assert_one_clear_line(result, "site-2.crt is missing")


def test_missing_plan(tmp_path: Path) -> None:
    result = bastion("aggregator", "start", "--workspace", str(tmp_path), cwd=tmp_path)
    _assert_one_clear_line(result, "no plan here")


def test_unknown_template(tmp_path: Path) -> None:
    result = bastion("workspace", "create", str(tmp_path / "x"), "--template", "nope", cwd=tmp_path)
    _assert_one_clear_line(result, "unknown template 'nope'; available: ")
    assert "numpy_logreg_digits" in result.stderr and "torch_cnn_mnist" in result.stderr


def test_workspace_into_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    result = bastion(
        "workspace",
        "create",
        str(tmp_path / "busy"),
        "--template",
        "numpy_logreg_digits",
        cwd=tmp_path,
    )
    _assert_one_clear_line(result, "is not empty")


def test_sign_missing_csr(base: Path, tmp_path: Path) -> None:
    result = bastion(
        "pki",
        "sign",
        str(tmp_path / "nobody.csr"),
        "--role",
        "collaborator",
        "--pki-dir",
        str(base / "pki"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nobody.csr" in result.stderr


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    result = bastion("aggregator", "start", "--no-such-flag", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "No such option" in result.stderr


def test_reinitialize_refuses_without_force(base: Path, tmp_path: Path) -> None:
    workspace = _copy(base, tmp_path)
    assert (
        bastion("plan", "initialize", "--workspace", str(workspace), cwd=tmp_path).returncode == 0
    )
    result = bastion("plan", "initialize", "--workspace", str(workspace), cwd=tmp_path)
    _assert_one_clear_line(result, "pass --force")
