"""Peak aggregator memory for a large model: is it O(model), not O(collaborators × model)?

Runs a real federation (aggregator + N collaborators as processes over mTLS) whose
model has PARAMS float32 parameters, samples the aggregator's peak resident set size
(VmHWM) while it runs, and writes the figures to benchmarks/results/.

    .venv/bin/python benchmarks/aggregator_memory.py --params 25000000 --collaborators 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bastion.pki import Role, init_ca, issue
from bastion.sim.processes import LocalFederation
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace
from bastion.workspace.verify import measure, sign

LARGE_TASK = '''
import numpy as np

from bastion.runners.base import TaskResult


class LargeModelRunner:
    """A {params:,}-parameter model whose training step nudges every weight."""

    def __init__(self, params, seed=0):
        rows = 1000
        self.weights = {{
            "dense.weight": np.zeros((rows, params // rows), dtype=np.float32),
            "dense.bias": np.zeros(rows, dtype=np.float32),
        }}
        self.rng = np.random.default_rng(seed)

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = {{k: np.array(v) for k, v in weights.items()}}

    def train(self, data, **args):
        for value in self.weights.values():
            value += np.float32(self.rng.normal())
        return TaskResult(data.train_count, {{"loss": 1.0}})

    def validate(self, data, **args):
        return TaskResult(data.valid_count, {{"accuracy": 0.5}})


def build_runner(params, seed=0):
    return LargeModelRunner(params, seed)
'''


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(params: int, collaborators: int, rounds: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bastion-memory-"))
    workspace = create_workspace(
        root / "ws", "numpy_logreg_digits", collaborators=collaborators, rounds=rounds
    )
    (workspace / "large_task.py").write_text(LARGE_TASK.format(params=params))
    plan = yaml.safe_load((workspace / "plan.yaml").read_text())
    plan["tasks"] = [{"name": "train", "kind": "train"}]
    plan["task_runner"] = {"path": "large_task:build_runner", "args": {"params": params}}
    (workspace / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    pki = workspace / "pki"
    init_ca(pki)
    issue(pki, "aggregator", Role.AGGREGATOR, hosts=["127.0.0.1"])
    issue(pki, "model-owner", Role.MODEL_OWNER)
    for i in range(1, collaborators + 1):
        issue(pki, f"site-{i}", Role.COLLABORATOR)
    initialize_plan(workspace)
    measure(workspace)
    sign(workspace, pki / "model-owner.key", pki / "model-owner.crt")

    started = time.monotonic()
    with LocalFederation(workspace) as federation:
        federation.start_aggregator()
        assert federation.aggregator_process is not None
        pid = federation.aggregator_process.pid
        idle_rss = vm_rss_bytes(pid)
        for name in federation.collaborators or []:
            federation.start_collaborator(name)
        peak = 0
        while federation.aggregator_process.poll() is None:
            try:
                peak = max(peak, vm_hwm_bytes(pid))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.05)
        codes = federation.wait(timeout=600)
    if any(codes.values()):
        raise SystemExit(f"federation failed: {codes}; logs in {workspace / 'logs'}")
    model_bytes = params * 4
    return {
        "params": params,
        "collaborators": collaborators,
        "rounds": rounds,
        "model_mb": model_bytes / 1e6,
        "aggregator_idle_rss_mb": idle_rss / 1e6,
        "aggregator_peak_rss_mb": peak / 1e6,
        "peak_over_model": peak / model_bytes,
        "wall_seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--collaborators", type=int, nargs="+", default=[3])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "aggregator_memory.json"
    )
    args = parser.parse_args()
    rows = [run(args.params, n, args.rounds) for n in args.collaborators]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"python": sys.version.split()[0], "results": rows}, indent=2) + "\n"
    )
    print(
        f"{'params':>12} {'collabs':>7} {'model MB':>9} {'idle RSS MB':>12} {'peak RSS MB':>12} {'peak/model':>10} {'wall s':>7}"
    )
    for r in rows:
        print(
            f"{r['params']:>12,} {r['collaborators']:>7} {r['model_mb']:>9.0f} {r['aggregator_idle_rss_mb']:>12.0f} "
            f"{r['aggregator_peak_rss_mb']:>12.0f} {r['peak_over_model']:>10.2f} {r['wall_seconds']:>7.1f}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
