"""A whole federation on one machine, each role a separate OS process on 127.0.0.1.

This is what ``bastion simulate --processes`` and ``make run`` use, and what the
end-to-end tests drive: the same ``bastion aggregator start`` and ``bastion
collaborator start`` commands an operator runs on separate machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bastion.errors import BastionError
from bastion.plan import Plan, load_plan

PORT_FILE = "aggregator.port"


@dataclass
class LocalFederation:
    """Starts and supervises an aggregator and collaborators as child processes."""

    workspace: Path
    collaborators: Sequence[str] | None = None
    insecure: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    aggregator_process: subprocess.Popen[bytes] | None = None
    collaborator_processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int | None = None

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).resolve()
        self.plan: Plan = load_plan(self.workspace)
        self.logs = self.workspace / self.plan.output.logs
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.collaborators is None:
            self.collaborators = self.plan.collaborator_names()

    def _command(self, *args: str) -> list[str]:
        command = [sys.executable, "-m", "bastion", *args, "--workspace", str(self.workspace)]
        return command + (["--insecure"] if self.insecure else [])

    def _spawn(self, log_name: str, command: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", **self.extra_env}
        log_file = (self.logs / log_name).open("ab")
        return subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=self.workspace
        )

    def start_aggregator(self, timeout: float = 60.0, port: int = 0) -> int:
        """Start the aggregator (on an ephemeral port by default); return the port once it listens."""
        port_file = self.logs / PORT_FILE
        port_file.unlink(missing_ok=True)
        self.aggregator_process = self._spawn(
            "aggregator.log",
            self._command(
                "aggregator",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--port-file",
                str(port_file),
            ),
        )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.aggregator_process.poll() is not None:
                raise BastionError(
                    f"the aggregator exited with code {self.aggregator_process.returncode}; "
                    f"see {self.logs / 'aggregator.log'}"
                )
            if time.monotonic() > deadline:
                raise BastionError(f"the aggregator did not start within {timeout:.0f}s")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self.port

    def start_collaborator(self, name: str, port: int | None = None) -> subprocess.Popen[bytes]:
        target = f"127.0.0.1:{port or self.port}"
        process = self._spawn(
            f"{name}.log", self._command("collaborator", "start", name, "--aggregator", target)
        )
        self.collaborator_processes[name] = process
        return process

    def start(self) -> None:
        self.start_aggregator()
        for name in self.collaborators or []:
            self.start_collaborator(name)

    def processes(self) -> list[subprocess.Popen[bytes]]:
        running = [self.aggregator_process] if self.aggregator_process else []
        return running + list(self.collaborator_processes.values())

    def failed(self) -> list[str]:
        """Roles that exited with a non-zero code so far."""
        failed = []
        if self.aggregator_process and self.aggregator_process.poll() not in (None, 0):
            failed.append("aggregator")
        failed += [n for n, p in self.collaborator_processes.items() if p.poll() not in (None, 0)]
        return failed

    def running(self) -> bool:
        return any(p.poll() is None for p in self.processes())

    def wait(self, timeout: float) -> dict[str, int]:
        """Wait for every process; return exit codes by role. Kills everything on timeout."""
        deadline = time.monotonic() + timeout
        codes: dict[str, int] = {}
        roles = [("aggregator", self.aggregator_process)] if self.aggregator_process else []
        roles += list(self.collaborator_processes.items())
        for role, process in roles:
            assert process is not None
            try:
                codes[role] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stop()
                raise BastionError(
                    f"{role} still running after {timeout:.0f}s; stopped everything"
                ) from None
        return codes

    def stop(self) -> None:
        for process in self.processes():
            if process.poll() is None:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self, role: str) -> str:
        path = self.logs / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""
