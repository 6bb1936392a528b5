"""Test-wide settings: nothing is written under the home directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SCRATCH = Path(tempfile.mkdtemp(prefix="bastion-tests-"))
for variable, sub in [
    ("BASTION_CACHE_DIR", "cache"),
    ("KERAS_HOME", "keras"),
    ("RAY_TMPDIR", "ray"),
    ("MPLCONFIGDIR", "matplotlib"),
    ("HF_HOME", "hf"),
    ("XDG_CACHE_HOME", "xdg-cache"),
]:
    os.environ.setdefault(variable, str(_SCRATCH / sub))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def scratch() -> Path:
    return _SCRATCH


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local ``mlflow server`` for the session: each test logs to its own experiment."""
    pytest.importorskip("mlflow.server", reason="the test's server needs: pip install mlflow")
    from support.mlflow_server import local_mlflow_server

    with local_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


#: Slow tests here start whole federations as processes; each already keeps both cores busy.
_FEDERATION_FOLDERS = ("e2e",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow federations ``federation``: ``make test`` runs them one at a time beside
    a second pytest that takes the other tests, which mostly leave a core idle."""
    tests = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(tests).parts[0] if item.path.is_relative_to(tests) else ""
        if item.get_closest_marker("slow") and folder in _FEDERATION_FOLDERS:
            item.add_marker(pytest.mark.federation)
