"""A federation service on 127.0.0.1 for tests: a CA, a director, site agents and model
owners as separate processes, each in its own folder with only its own key."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bastion.pki import Role, init_ca, issue
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace
from bastion.workspace.verify import measure, sign
from support.workspaces import edit_plan

DIRECTOR = "director"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: The tabular template's runner with each training task ``seconds`` longer.
SLOW_TASK = """
import importlib.util
import time
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("tabular_task", Path(__file__).with_name("task.py"))
_task = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_task)


def build_runner(**args: Any):
    runner = _task.build_runner(**args)
    train = runner.train

    def slow_train(data, **task_args):
        time.sleep({seconds})
        return train(data, **task_args)

    runner.train = slow_train
    return runner
"""


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def site_table(path: Path, rows: int, offset: int) -> None:
    """A site's own CSV: a distinct slice of scikit-learn's digits (64 pixels + label)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data[offset : offset + rows] / 16.0, digits.target[offset : offset + rows]
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(
        path,
        np.column_stack([x, y]),
        delimiter=",",
        header=header,
        comments="",
        fmt=["%.4f"] * 64 + ["%d"],
    )


class Service:
    """Folders and processes of one test federation service."""

    def __init__(self, root: Path, sites: list[str], owners: list[str]) -> None:
        self.root = root
        self.ca = root / "ca"
        init_ca(self.ca)
        self.parties: dict[str, Path] = {}
        issue(self.ca, DIRECTOR, Role.AGGREGATOR, hosts=["127.0.0.1", "localhost"])
        self._party(DIRECTOR)
        for name in sites:
            issue(self.ca, name, Role.COLLABORATOR)
            self._party(name)
        for name in owners:
            issue(self.ca, name, Role.MODEL_OWNER)
            self._party(name)
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def _party(self, name: str) -> None:
        """Only ca.crt and the party's own key and certificate travel to its folder."""
        pki = self.root / name / "pki"
        pki.mkdir(parents=True)
        for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
            (pki / file).write_bytes((self.ca / file).read_bytes())
        (pki / f"{name}.key").chmod(0o600)
        self.parties[name] = self.root / name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pki(self, name: str) -> Path:
        return self.parties[name] / "pki"

    def _spawn(self, key: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        log = (cwd / f"{key}.out").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "bastion", *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.processes[key] = process
        return process

    def start_director(self) -> subprocess.Popen[bytes]:
        folder = self.parties[DIRECTOR]
        port_file = folder / "port"
        port_file.unlink(missing_ok=True)
        process = self._spawn(
            DIRECTOR,
            [
                "director", "start", "--name", DIRECTOR, "--pki-dir", "pki", "--dir", "state",
                "--host", "127.0.0.1", "--port", str(self.port), "--port-file", str(port_file),
            ],
            folder,
        )  # fmt: skip
        wait_for(lambda: port_file.is_file() or process.poll() is not None, "the director")
        assert process.poll() is None, self.output(DIRECTOR)
        return process

    def start_site(
        self,
        name: str,
        rows: int,
        offset: int,
        owners: dict[str, Any] | list[str],
        dataset: str = "records",
        **policy: Any,
    ) -> subprocess.Popen[bytes]:
        folder = self.parties[name]
        table = folder / "data" / f"{name}.csv"
        if not table.is_file():
            site_table(table, rows, offset)
        (folder / "site.yaml").write_text(
            yaml.safe_dump({"datasets": {dataset: {"path": f"data/{name}.csv"}}})
        )
        (folder / "policy.yaml").write_text(
            yaml.safe_dump({"owners": owners, "max_concurrent_jobs": 4, **policy})
        )
        return self._spawn(
            name,
            [
                "site", "start", "--name", name, "--director", self.address, "--pki-dir", "pki",
                "--policy", "policy.yaml", "--data", "site.yaml", "--dir", "state", "--poll", "0.3",
            ],
            folder,
        )  # fmt: skip

    def site_dir(self, name: str) -> Path:
        return self.parties[name] / "state"

    def output(self, key: str) -> str:
        path = self.parties[key] / f"{key}.out"
        return path.read_text(errors="replace") if path.is_file() else ""

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[key]
        if process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=60)

    def stop_all(self) -> None:
        for key in list(self.processes):
            self.kill(key, signal.SIGTERM)
        # anything a killed parent left behind (aggregators, collaborators) of this test
        for pid_file in self.root.glob("**/state/jobs/*/pid"):
            _kill_quietly(int(pid_file.read_text()), f"BASTION_SITE_JOB={pid_file.parent.name}")
        director_db = self.parties[DIRECTOR] / "state" / "director.db"
        if director_db.is_file():
            import sqlite3

            with sqlite3.connect(director_db) as conn:
                for job_id, pid in conn.execute("SELECT id, pid FROM jobs WHERE pid IS NOT NULL"):
                    _kill_quietly(pid, f"BASTION_JOB_ID={job_id}")

    def workspace(
        self,
        name: str,
        owner: str,
        roster: list[str],
        rounds: int,
        plan_changes: dict[str, Any] | None = None,
        files: dict[str, str] | None = None,
        train_delay: float = 0.0,
    ) -> Path:
        """A signed workspace of ``owner`` (the tabular template: each site's own CSV), with
        ``files`` (name -> text) added, e.g. task code for another model. ``train_delay``
        lengthens each training task, for tests that must watch a job mid-way: the tiny
        model's rounds otherwise end in a tenth of a second."""
        workspace = create_workspace(
            self.root / owner / name, "numpy_logreg_tabular", collaborators=roster, rounds=rounds
        )
        files = dict(files or {})
        if train_delay:
            files["slow_task.py"] = SLOW_TASK.format(seconds=train_delay)
            plan_changes = {
                **(plan_changes or {}),
                "task_runner": {"path": "slow_task:build_runner"},
            }
        for file_name, text in files.items():
            (workspace / file_name).write_text(text)
        changes: dict[str, Any] = {
            "name": name,
            "network": {"aggregator_name": DIRECTOR, "address": "127.0.0.1"},
            "timeouts": {"round_seconds": 120, "min_results": 1, "poll_seconds": 0.2},
        }
        edit_plan(workspace, changes)
        if plan_changes:
            edit_plan(workspace, plan_changes)
        initialize_plan(workspace)
        measure(workspace)
        pki = self.pki(owner)
        sign(workspace, pki / f"{owner}.key", pki / f"{owner}.crt", pki / "ca.crt")
        return workspace


def _kill_quietly(pid: int, marker: str) -> None:
    """SIGKILL ``pid`` if it is still the process of this test: its environment holds
    ``marker`` (one job's id). Any ``BASTION_`` variable is not enough: with pids reused
    under load, every process of a parallel test has some (``BASTION_CACHE_DIR``)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return
    if marker.encode() in environ:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
