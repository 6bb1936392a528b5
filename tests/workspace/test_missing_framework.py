"""A plan whose task code needs a framework that is not installed says which extra to install."""

from __future__ import annotations

import importlib.abc
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import MissingDependency
from bastion.runners.extras import missing_framework
from bastion.workspace.code import import_callable
from bastion.workspace.templates import create_workspace

#: template, the framework its task code imports first, the extra that installs it
TEMPLATES = [
    ("torch_cnn_mnist", "torch", "torch"),
    ("lightning_mlp_digits", "lightning", "lightning"),
    ("transformers_minilm_text", "transformers", "transformers"),
    ("peft_minilm_lora", "peft", "peft"),
    ("keras_mlp_digits", "keras", "keras"),
    ("jax_mlp_mnist", "jax", "jax"),
    ("sklearn_sgd_mnist", "sklearn", "sklearn"),
    ("mxnet_mlp_digits", "mxnet", "mxnet"),
]


class Uninstalled(importlib.abc.MetaPathFinder):
    """Fails imports of one top-level package exactly as Python does when it is not installed."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname == self.package:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


def hide(monkeypatch: pytest.MonkeyPatch, framework: str) -> None:
    """Make ``framework`` unimportable in this test, as if it were not installed.

    Bastion's adapters go too: one imported earlier in this process would hand the template
    its runner without importing the framework again."""
    hidden = (framework, "bastion.runners")
    for name in [
        n for n in sys.modules if n in hidden or n.startswith(tuple(h + "." for h in hidden))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Uninstalled(framework), *sys.meta_path])


@pytest.mark.parametrize(
    ("template", "framework", "extra"), TEMPLATES, ids=[t[0] for t in TEMPLATES]
)
def test_each_template_names_its_extra_when_the_framework_is_missing(
    template: str, framework: str, extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = create_workspace(tmp_path / "ws", template, collaborators=2)
    hide(monkeypatch, framework)
    with pytest.raises(MissingDependency) as error:
        import_callable("task:build_runner", workspace, "task_runner.path")
    message = str(error.value)
    assert message.startswith("key 'task_runner.path': module 'task' needs")
    assert f"pip install 'bastion-fl[{extra}]'" in message
    assert extra in (workspace / "requirements.txt").read_text() or extra == "sklearn"


def test_a_missing_submodule_of_an_installed_framework_is_not_an_extra() -> None:
    assert missing_framework(ModuleNotFoundError(name="numpy.nowhere"), "task") is None
    assert missing_framework(ModuleNotFoundError(name="left_pad"), "task") is None


def test_cli_refuses_the_plan_in_one_line_with_the_extra(tmp_path: Path) -> None:
    """The main venv has no mxnet (it lives in .venv-mxnet): a real missing framework."""
    if importlib.util.find_spec("mxnet") is not None:
        pytest.skip("mxnet is installed here; the hidden-module cases above cover the message")
    workspace = create_workspace(tmp_path / "ws", "mxnet_mlp_digits", collaborators=2)
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "plan", "initialize", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "pip install 'bastion-fl[mxnet]'" in output
    assert "Traceback" not in output
