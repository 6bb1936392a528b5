"""The fault harness: a real federation (processes, mTLS, checkpoints) with faults armed per role.

A fault is armed through ``BASTION_FAULT`` (``bastion.faults``) in the environment of one
process only, and every firing is appended to a log, so a scenario waits on the fault having
happened, never on a sleep. ``CheckpointWatcher`` reads ``last.safetensors`` all through the
run: every read must be a whole checkpoint, never older than the one before.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults.proxy import FaultProxy
from support.federations import checkpoint_state
from support.workspaces import edit_plan, make_workspace, sign_workspace

from bastion.faults import ENV, LOG_ENV
from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint
from bastion.workspace.initialize import initialize_plan

#: How long an aggregator may take to listen (bounded, but patient under load).
START_SECONDS = 240.0

#: ``make faults`` sets it: every scenario × injection point; otherwise a fast subset.
FULL = os.environ.get("BASTION_FAULTS_FULL") == "1"


def full_only(*values: object) -> list[object]:
    """Parameters that run only under ``make faults``."""
    return [
        pytest.param(v, marks=pytest.mark.skipif(not FULL, reason="make faults")) for v in values
    ]


# The template's model, made a pure function of (global model, data): a round retried after a
# crash trains exactly as it did the first time, so a disturbed run ends on the same model.
DETERMINISTIC_TASK = """
import time
import zlib

import numpy as np

from bastion.runners.numpy import NumpyRunner
from task import SoftmaxRegression


class Deterministic(SoftmaxRegression):
    def __init__(self, seed=0, delay=0.0, extra=0):
        super().__init__(seed=seed)
        self.delay = float(delay)
        # Padding that makes the model (and the wire, and each checkpoint) as big as asked.
        self.pad = np.zeros(int(extra), dtype=np.float32)

    def get_weights(self):
        weights = super().get_weights()
        return {**weights, "pad": self.pad} if self.pad.size else weights

    def set_weights(self, weights):
        super().set_weights(weights)
        if "pad" in weights:
            self.pad = weights["pad"].astype(np.float32)

    def fit(self, x, y, epochs=1, batch_size=16, lr=0.1):
        time.sleep(self.delay)
        self._rng = np.random.default_rng(zlib.crc32(self.w.tobytes()))
        return super().fit(x, y, epochs, batch_size, lr)


def build_runner(seed=0, delay=0.0, extra=0):
    return NumpyRunner(Deterministic(seed=seed, delay=delay, extra=extra))


# Ten Gaussian classes in 64 dimensions: digits' shape without importing scikit-learn
# (which alone took ~15 s of every process start on two busy cores).
def load_blobs():
    from bastion.data.types import Dataset

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64)).astype(np.float32)
    y = np.arange(1800, dtype=np.int64) % 10
    x = (centers[y] + rng.normal(scale=1.5, size=(1800, 64))).astype(np.float32)
    return Dataset("blobs", x[:1440], y[:1440], x[1440:], y[1440:], 10)
"""


class CheckpointWatcher(threading.Thread):
    """Reads ``last.safetensors`` every few ms; records every state seen and every violation."""

    def __init__(self, path: Path, period: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.path, self.period = path, period
        self.seen: list[int] = []
        self.violations: list[str] = []
        self._halt = threading.Event()
        self.reads = 0

    def run(self) -> None:
        copy = self.path.with_name(".watcher-copy")
        while not self._halt.wait(self.period):
            try:
                shutil.copyfile(self.path, copy)
            except FileNotFoundError:
                continue
            self.reads += 1
            try:
                state = checkpoint_state(copy)
            except Exception as exc:  # a partial checkpoint is exactly what this looks for
                self.violations.append(f"unreadable checkpoint: {exc}")
                continue
            key = int(state["round_completed"]) * 2 + int(bool(state["finished"]))
            if self.seen and key < self.seen[-1]:
                self.violations.append(f"checkpoint went back from {self.seen[-1]} to {key}")
            if not self.seen or key != self.seen[-1]:
                self.seen.append(key)
        copy.unlink(missing_ok=True)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


@dataclass
class FaultFederation:
    """A workspace and its federation, with per-process faults and the suite's invariants."""

    root: Path
    collaborators: int = 2
    rounds: int = 3
    plan_changes: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    # 100k float32 of padding: a 400 KB model, so a download is many TCP segments.
    extra: int = 100_000

    def __post_init__(self) -> None:
        timeouts = {"round_seconds": 60, "poll_seconds": 0.2}
        changes = {"timeouts": timeouts, **self.plan_changes}
        if "timeouts" in self.plan_changes:
            changes["timeouts"] = {**timeouts, **self.plan_changes["timeouts"]}
        self.workspace = make_workspace(
            self.root,
            collaborators=self.collaborators,
            rounds=self.rounds,
            plan_changes=changes,
            initialize=False,
        )
        (self.workspace / "det_task.py").write_text(DETERMINISTIC_TASK)
        args = {"seed": 0, "delay": self.delay, "extra": self.extra}
        edit_plan(
            self.workspace,
            {
                "task_runner": {"path": "det_task:build_runner", "args": args},
                "data": {"loader": "det_task:load_blobs"},
            },
        )
        initialize_plan(self.workspace)
        sign_workspace(self.workspace)
        self.names = [f"site-{i}" for i in range(1, self.collaborators + 1)]
        self.fault_log = self.root / "faults.log"
        self.federation = LocalFederation(self.workspace)
        self.save = self.workspace / "save"
        self.last = self.save / "last.safetensors"
        self.metrics_path = self.workspace / "logs" / "metrics.jsonl"
        self.watcher = CheckpointWatcher(self.last)
        self.started = time.monotonic()

    # ------------------------------------------------------------------ processes

    def _env(self, fault: str | None) -> dict[str, str]:
        env = {LOG_ENV: str(self.fault_log)}
        if fault:
            env[ENV] = fault
        return env

    def start_aggregator(self, fault: str | None = None, port: int = 0) -> int:
        self.federation.extra_env = self._env(fault)
        try:
            # Generous: on two cores shared with other suites, imports alone took over 60 s.
            return self.federation.start_aggregator(timeout=START_SECONDS, port=port)
        finally:
            self.federation.extra_env = {}

    def start_collaborator(
        self, name: str, fault: str | None = None, port: int | None = None
    ) -> None:
        self.federation.extra_env = self._env(fault)
        try:
            self.federation.start_collaborator(name, port=port)
        finally:
            self.federation.extra_env = {}

    def start(self, aggregator_fault: str | None = None, port: int | None = None) -> int:
        """Aggregator (with its fault), then every collaborator (to ``port``: a proxy's)."""
        own = self.start_aggregator(aggregator_fault)
        if not self.watcher.is_alive():
            self.watcher.start()
        for name in self.names:
            self.start_collaborator(name, port=port)
        return own

    def fired(self) -> list[str]:
        return self.fault_log.read_text().splitlines() if self.fault_log.exists() else []

    def wait_for(self, what: Callable[[], bool], timeout: float, label: str) -> float:
        """Poll ``what`` (bounded); the seconds it took."""
        started = time.monotonic()
        while not what():
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"{label}: not within {timeout:.0f}s\n"
                    + self.federation.log_text("aggregator")[-4000:]
                )
            time.sleep(0.02)
        return time.monotonic() - started

    def wait_fired(self, point: str, timeout: float = 90) -> float:
        return self.wait_for(lambda: any(point in line for line in self.fired()), timeout, point)

    def wait_exit(self, role: str, timeout: float = 30) -> int:
        process = (
            self.federation.aggregator_process
            if role == "aggregator"
            else self.federation.collaborator_processes[role]
        )
        assert process is not None
        return process.wait(timeout=timeout)

    def finish(self, timeout: float = 150) -> dict[str, int]:
        try:
            return self.federation.wait(timeout=timeout)
        finally:
            self.watcher.stop()

    def close(self) -> None:
        self.federation.stop()
        for proxy in getattr(self, "proxies", {}).values():
            proxy.close()
        if self.watcher.is_alive():
            self.watcher.stop()

    # ------------------------------------------------------------------ invariants

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    def final_model(self) -> dict[str, np.ndarray]:
        model, _ = load_checkpoint(self.last)
        return {k: v for k, v in model.items() if not k.startswith("strategy/")}

    def assert_invariants(
        self,
        codes: dict[str, int],
        baseline: dict[str, np.ndarray] | None = None,
        blamable: tuple[str, ...] = (),
    ) -> None:
        """Finished with the planned rounds, same model as undisturbed, checkpoints monotone
        and whole, no stale temp file, no honest site blamed."""
        logs = self.federation.log_text("aggregator")[-6000:]
        assert codes == {"aggregator": 0, **dict.fromkeys(self.names, 0)}, (codes, logs)
        state = checkpoint_state(self.last)
        assert state["round_completed"] == self.rounds and state["finished"], state
        assert not self.watcher.violations, self.watcher.violations
        leftovers = sorted(p.name for p in self.save.iterdir() if p.name.endswith(".tmp"))
        assert not leftovers, f"stale temporary checkpoint files: {leftovers}"
        records = self.records()
        summarized = [r["round"] for r in round_summaries(records) if not r["final_evaluation"]]
        assert summarized == list(range(1, self.rounds + 1)), f"rounds summarized: {summarized}"
        for record in records:
            if record.get("event") != "round":
                continue
            for kind in ("rejected", "failed"):
                blamed = set(record.get(kind) or {}) - set(blamable)
                assert not blamed, f"honest sites blamed ({kind}) in {record}"
        if baseline is not None:
            model = self.final_model()
            assert set(model) == set(baseline)
            for name, value in baseline.items():
                np.testing.assert_array_equal(model[name], value, err_msg=name)

    def rounds_done(self) -> int:
        return max((r["round"] for r in self.records() if r.get("event") == "round"), default=0)

    def wait_round(self, number: int, timeout: float = 120) -> float:
        return self.wait_for(lambda: self.rounds_done() >= number, timeout, f"round {number}")

    def start_behind_proxies(self, **settings: Any) -> dict[str, FaultProxy]:
        """Aggregator, then each site through a proxy of its own (``settings`` for all)."""
        own = self.start_aggregator()
        self.watcher.start()
        proxies = {}
        for index, name in enumerate(self.names):
            proxy = FaultProxy(own, seed=index, **settings)
            proxies[name] = proxy
            self.start_collaborator(name, port=proxy.start())
        self.proxies = proxies
        return proxies

    def lost_rounds(self) -> int:
        """Rounds started more than once (work redone because of the fault)."""
        starts = [r["round"] for r in self.records() if r.get("event") == "round_start"]
        return len(starts) - len(set(starts))


def undisturbed(root: Path, **settings: Any) -> dict[str, np.ndarray]:
    """The final model of a federation run without any fault."""
    run = FaultFederation(root, **settings)
    try:
        run.start()
        codes = run.finish(timeout=240)
        run.assert_invariants(codes)
        return run.final_model()
    finally:
        run.close()


def shared_model(
    factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``build``'s model, built once per test session even across pytest-xdist workers (they
    share the parent of their base temp folders; the first takes the lock and builds)."""
    import fcntl

    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / f"{name}.npz"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            model = build(factory.mktemp(name))
            np.savez(root / f"{name}.tmp.npz", **model)
            os.replace(root / f"{name}.tmp.npz", path)
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def rss_and_fds(pid: int) -> tuple[int, int]:
    """Resident set size in bytes and open file descriptors of ``pid`` (Linux)."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))
