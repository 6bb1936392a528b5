"""A workspace's modules run from their verified source; installed modules keep their bytecode."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Records which files the interpreter compiled from source (the "compile" audit event), then
# imports the workspace's task through Bastion and a module installed outside it.
PROBE = """
import json, sys
from pathlib import Path
compiled = []
sys.addaudithook(lambda event, args: compiled.append(str(args[1])) if event == "compile" else None)
from bastion.workspace.bytecode import ignore_workspace_bytecode
from bastion.workspace.code import import_callable
workspace, installed, isolate = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
if isolate:
    ignore_workspace_bytecode(workspace)
sys.path.append(installed)
import helper
value = import_callable("task:value", workspace, "task_runner.path")()
print(json.dumps({"value": value, "compiled": compiled}))
"""


def _plant(workspace: Path) -> None:
    """``task.py`` returns "signed"; its ``__pycache__`` holds a valid ``.pyc`` of a version
    that returns "planted", stamped with the source's size and time so Python would trust it."""
    task = workspace / "task.py"
    task.write_text("def value():\n    return 'planted'\n")
    py_compile.compile(str(task), cfile=importlib.util.cache_from_source(str(task)))
    stat = task.stat()
    task.write_text("def value():\n    return 'signed!'\n")  # same size
    os.utime(task, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _probe(tmp_path: Path, isolate: bool) -> dict[str, object]:
    workspace, installed = tmp_path / "workspace", tmp_path / "installed"
    workspace.mkdir(exist_ok=True)
    installed.mkdir(exist_ok=True)
    _plant(workspace)
    helper = installed / "helper.py"
    helper.write_text("NAME = 'helper'\n")
    py_compile.compile(str(helper), cfile=importlib.util.cache_from_source(str(helper)))
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-c", PROBE, str(workspace), str(installed), "1" if isolate else "0"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_planted_pyc_in_the_workspace_never_runs(tmp_path: Path) -> None:
    # the planted bytecode is what plain Python would run: the test's premise
    assert _probe(tmp_path, isolate=False)["value"] == "planted"
    result = _probe(tmp_path, isolate=True)
    assert result["value"] == "signed!"
    assert str(tmp_path / "workspace" / "task.py") in result["compiled"]


def test_modules_outside_the_workspace_keep_their_bytecode(tmp_path: Path) -> None:
    result = _probe(tmp_path, isolate=True)
    compiled = result["compiled"]
    assert isinstance(compiled, list)
    assert not [f for f in compiled if f.endswith("helper.py")], compiled
