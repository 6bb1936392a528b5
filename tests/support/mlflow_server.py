"""A local ``mlflow server`` on 127.0.0.1 (SQLite store and artifacts under a test folder)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from support.service import free_port, wait_for


@contextmanager
def local_mlflow_server(root: Path) -> Iterator[str]:
    """Yields the server's URI; HOME points into ``root`` (nothing under the real home)."""
    port = free_port()
    store = root / "mlflow"
    store.mkdir()
    env = {**os.environ, "HOME": str(root), "MLFLOW_TRACKING_DIR": str(store)}
    log = (root / "mlflow.out").open("wb")
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow_bin)] if mlflow_bin.exists() else [shutil.which("mlflow") or "mlflow"]
    process = subprocess.Popen(
        [
            *command, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"),
        ],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError((root / "mlflow.out").read_text()[-3000:])
        try:
            return requests.get(uri + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(up, "the mlflow server", 120)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # its workers may linger: the whole group goes
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
