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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the slow federations ``federation``: ``make test`` runs them one at a time beside
    a second pytest that takes the other tests, which mostly leave a core idle."""
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        if item.get_closest_marker("slow") and item.path.is_relative_to(e2e):
            item.add_marker(pytest.mark.federation)
