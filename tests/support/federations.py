"""Running a template's federation end to end: real processes, real certificates, real data."""

from __future__ import annotations

import importlib
import json
import signal
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bastion.metrics.log import read_metrics, round_summaries
from bastion.sim.processes import LocalFederation
from bastion.storage.checkpoints import load_checkpoint
from support.workspaces import make_workspace

SITES = ("site-1", "site-2")


@dataclass(frozen=True)
class FederationRun:
    """The global model's validation accuracy after each round (the initial model first)."""

    template: str
    framework: str
    version: str
    accuracy: list[float]
    seconds: float

    def line(self) -> str:
        """One row of the framework table the issue's closing note reports."""
        return (
            f"{self.framework} {self.version} | {self.template} | {len(self.accuracy) - 1} rounds"
            f" | accuracy {' -> '.join(f'{a:.3f}' for a in self.accuracy)} | {self.seconds:.1f}s"
        )


def run_template_federation(
    root: Path,
    template: str,
    adapter: str,
    distribution: str,
    rounds: int,
    plan_changes: dict[str, Any] | None = None,
    timeout: float = 240,
) -> FederationRun:
    """Create, sign and initialize the template's workspace, then run 2 collaborators over mTLS.

    ``adapter`` is imported first so that a missing extra fails here, naming it, rather
    than in a child process; ``distribution`` is the framework whose version is reported.
    """
    importlib.import_module(adapter)
    started = time.perf_counter()
    workspace = make_workspace(
        root, template, collaborators=len(SITES), rounds=rounds, plan_changes=plan_changes
    )
    with LocalFederation(workspace) as federation:
        federation.start()
        codes = federation.wait(timeout=timeout)
    logs = "\n".join(federation.log_text(r) for r in ("aggregator", *SITES))
    assert codes == {"aggregator": 0, **dict.fromkeys(SITES, 0)}, logs[-6000:]
    summaries = round_summaries(read_metrics(workspace / "logs" / "metrics.jsonl"))
    accuracy = [float(s["tasks"]["validate_global"]["accuracy"]) for s in summaries]
    run = FederationRun(
        template,
        adapter.rsplit(".", 1)[-1],
        metadata.version(distribution),
        accuracy,
        time.perf_counter() - started,
    )
    print(run.line())
    return run


def checkpoint_state(path: Path) -> dict[str, Any]:
    """The federation's state saved with a checkpoint: rounds completed, finished, ..."""
    return dict(json.loads(load_checkpoint(path)[1]["bastion.state"]))


def kill_aggregator_after_round(
    federation: LocalFederation, round_number: int, timeout: float = 120
) -> int:
    """``kill -9`` the aggregator once round ``round_number`` is checkpointed (its summary
    is in the metrics log before that); the rounds its last checkpoint had completed (a
    later round may have ended meanwhile)."""
    last = federation.workspace / federation.plan.output.checkpoints / "last.safetensors"
    deadline = time.monotonic() + timeout
    while _rounds_checkpointed(last) < round_number:
        assert time.monotonic() < deadline, federation.log_text("aggregator")
        time.sleep(0.05)
    process = federation.aggregator_process
    assert process is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return _rounds_checkpointed(last)


def _rounds_checkpointed(last: Path) -> int:
    """Rounds completed in the checkpoint ``last`` (written atomically), 0 before the first."""
    return int(checkpoint_state(last)["round_completed"]) if last.exists() else 0


def restart_aggregator(federation: LocalFederation, port: int, after: float = 1.0) -> None:
    """Start the aggregator again on ``port`` once the collaborators have been retrying for
    ``after`` seconds (none may have given up)."""
    time.sleep(after)
    assert all(p.poll() is None for p in federation.collaborator_processes.values())
    federation.start_aggregator(port=port)
