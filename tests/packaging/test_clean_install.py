"""`pip install bastion-fl` alone: `import bastion` and a NumPy federation, no framework anywhere.

The wheel is built from this checkout and installed, with its core dependencies only,
into a fresh venv from the wheelhouse the Makefile downloads (offline: --no-index).
Then the real CLI runs a 2-collaborator NumPy federation over mutual TLS there, and a
workspace needing Lightning is refused with the extra to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
FRAMEWORKS = ("torch", "tensorflow", "jax", "transformers", "keras", "lightning", "mxnet")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not any(WHEELHOUSE.glob("numpy-*.whl")),
        reason=f"no core wheels in {WHEELHOUSE}: `make .venv/.installed` downloads them",
    ),
]


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n{output[-4000:]}"
    )
    return output


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv holding bastion-fl and its core dependencies, installed offline."""
    root = tmp_path_factory.mktemp("clean-install")
    source = root / "source"  # a copy, so the build writes nothing into the checkout
    shutil.copytree(
        REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(root / "home"),
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CONFIG_FILE": os.devnull,  # no machine-wide index settings: wheelhouse only
        "BASTION_CACHE_DIR": str(root / "cache"),
        "COLUMNS": "200",
    }
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], root, env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--no-compile"]
    run([*pip, "--find-links", str(WHEELHOUSE), str(source)], root, env, timeout=600)
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    return venv, env


def test_only_the_core_is_installed(clean_venv: tuple[Path, dict[str, str]]) -> None:
    venv, env = clean_venv
    listing = run([str(venv / "bin" / "python"), "-m", "pip", "list"], venv, env).lower()
    assert "bastion-fl" in listing
    installed = {line.split()[0] for line in listing.splitlines()[2:] if line.strip()}
    assert installed.isdisjoint(FRAMEWORKS), installed & set(FRAMEWORKS)


def test_import_bastion_loads_no_framework(clean_venv: tuple[Path, dict[str, str]]) -> None:
    venv, env = clean_venv
    script = (
        "import sys, bastion, bastion.cli.main, bastion.runners.numpy, bastion.workspace.tasks\n"
        f"loaded = sorted(set({FRAMEWORKS!r}) & {{m.split('.')[0] for m in sys.modules}})\n"
        "assert not loaded, loaded\n"
        "print(bastion.__file__)\n"
    )
    output = run([str(venv / "bin" / "python"), "-c", script], venv, env)
    assert str(venv) in output  # the installed wheel, not this checkout


def test_numpy_federation_over_mtls(clean_venv: tuple[Path, dict[str, str]]) -> None:
    """The model owner's and operator's commands, as in the README, then a real federation."""
    venv, env = clean_venv
    workspace = venv.parent / "numpy-ws"
    run(
        [
            "bastion",
            "workspace",
            "create",
            str(workspace),
            "--template",
            "numpy_logreg_digits",
            "--collaborators",
            "2",
            "--rounds",
            "1",
        ],
        venv.parent,
        env,
    )
    for command in (
        ["pki", "init"],
        ["pki", "issue", "aggregator", "--role", "aggregator", "--host", "127.0.0.1"],
        ["pki", "issue", "site-1", "--role", "collaborator"],
        ["pki", "issue", "site-2", "--role", "collaborator"],
        ["pki", "issue", "model-owner", "--role", "model-owner"],
        ["plan", "initialize"],
        ["workspace", "measure"],
        ["workspace", "sign", "--key", "pki/model-owner.key", "--cert", "pki/model-owner.crt"],
    ):
        run(["bastion", *command], workspace, env)
    output = run(
        ["bastion", "simulate", "--require-improvement", "--timeout", "240"], workspace, env
    )
    assert "mutual TLS" in (workspace / "logs" / "aggregator.log").read_text(), output


def test_a_framework_template_names_its_extra(clean_venv: tuple[Path, dict[str, str]]) -> None:
    venv, env = clean_venv
    workspace = venv.parent / "lightning-ws"
    run(
        ["bastion", "workspace", "create", str(workspace), "--template", "lightning_mlp_digits"],
        venv.parent,
        env,
    )
    result = subprocess.run(
        ["bastion", "plan", "initialize"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "pip install 'bastion-fl[lightning]'" in output
    assert "Traceback" not in output
