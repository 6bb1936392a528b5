"""OpenFL's TaskRunner as real processes, for benchmarks/peers.py's round-overhead comparison.

Run with OpenFL's own virtualenv (openfl 1.9)::

    python openfl_run.py --root DIR --clients N --params P --rounds R --out result.json

builds an OpenFL workspace in ``DIR`` and sets up its PKI with OpenFL's ``fx`` CLI, then
starts ``fx aggregator start`` and N ``fx collaborator start`` processes that talk gRPC over
OpenFL's mutual TLS on 127.0.0.1. The workload matches peers/flower_app: one float32 array of
``--params`` weights, a ``train`` task that adds 0.001 to every weight and reports the number
of examples, FedAvg (OpenFL's default WeightedAverage) over all N collaborators. Unlike
Flower's run, each collaborator also scores the global model it receives (the mean weight:
OpenFL's aggregator cannot finish a round without a validation score), which costs one more
scalar message per collaborator and round. The workspace's code is this very file (copied to
``src/``; the plan names the classes below), so the federation runs exactly this workload.

Round boundaries: OpenFL's aggregator logs ``Starting round k...`` (or ``Experiment
Completed``) right after it has aggregated round k-1 and saved the model. Each line of the
aggregator's output is time-stamped here as it arrives over a pipe (OpenFL's own log stamps
have whole seconds only), so round k lasts from the previous such line to its own; the
first round runs from the aggregator's start, so it includes start-up. ``wall_seconds`` runs
from the aggregator's start to the end of the last round.

OpenFL paces its own rounds: a collaborator that asks for work while the round is still
open is told to sleep for 10 s (``Aggregator._get_sleep_time``, fixed), so with more than
one collaborator a round rarely ends sooner than about 10 s after the previous one. The
processes are stopped once the last round is aggregated: OpenFL's own shutdown takes up to
another 15 s (collaborators learn of the end at their next poll, and the aggregator checks
for that every 5 s), which measures nothing.

Writes ``{"round_seconds": [...], "wall_seconds": W}`` to ``--out``; exits non-zero with the
reason on stderr when the federation cannot be set up or does not finish.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from openfl.federated.data.loader import DataLoader
from openfl.federated.task.runner import TaskRunner
from openfl.utilities import TensorKey

HOST = "127.0.0.1"
NUDGE = np.float32(0.001)
EXAMPLES = 100
SETUP_SECONDS = 300.0  # for each fx command that builds the workspace or its PKI
LISTEN_SECONDS = 120.0
STALL_SECONDS = 120.0  # no round may take longer (the first includes start-up)
ROUND_END = re.compile(rb"Starting round \d+\.\.\.|Experiment Completed")
PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------- the workload


class TinyData(DataLoader):
    """A hundred random examples: they only weigh each collaborator's update in FedAvg."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # the plan's data_path: nothing to read
        self.examples = np.random.default_rng().random((EXAMPLES, 1), dtype=np.float32)

    def get_feature_shape(self) -> tuple[int, ...]:
        return tuple(self.examples.shape[1:])

    def get_train_data_size(self) -> int:
        return len(self.examples)

    def get_valid_data_size(self) -> int:
        return len(self.examples)


class NudgeRunner(TaskRunner):
    """A model of ``params`` float32 weights whose training adds a constant to each."""

    def __init__(self, params: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights = np.zeros(params, dtype=np.float32)

    def initialize_tensorkeys_for_functions(self) -> None:
        """Nothing to declare: both tasks need just the global weights, named below."""

    def get_required_tensorkeys_for_function(self, func_name: str, **kwargs: Any) -> list[Any]:
        return [TensorKey("weights", "GLOBAL", 0, False, ("model",))]

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    def validate_task(
        self, col_name: str, round_num: int, input_tensor_dict: dict[str, np.ndarray], **kwargs: Any
    ) -> tuple[dict[Any, Any], dict[Any, Any]]:
        """The global model's score: OpenFL's aggregator needs one (its checkpoint records the
        best score, and fails on none), so this stands in for evaluation, at a glance's cost."""
        score = np.array(input_tensor_dict["weights"].mean(), dtype=np.float32)
        return {
            TensorKey("mean_weight", col_name, round_num, True, ("metric", "validate_agg")): score
        }, {}

    def train_task(
        self, col_name: str, round_num: int, input_tensor_dict: dict[str, np.ndarray], **kwargs: Any
    ) -> tuple[dict[Any, Any], dict[Any, Any]]:
        """The update goes to the aggregator; a new array, since OpenFL keeps the input
        cached to compute the delta it sends."""
        self.weights = input_tensor_dict["weights"] + NUDGE
        examples = np.array(self.get_train_data_size(), dtype=np.float32)
        sent = {
            TensorKey("examples", col_name, round_num, True, ("metric",)): examples,
            TensorKey("weights", col_name, round_num, False, ("trained",)): self.weights,
        }
        return sent, {}


# --------------------------------------------------------------------------- the federation


class Failed(Exception):
    """The federation could not be set up or did not finish; the message says why."""


def tail(text: bytes | str, size: int = 1500) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-size:].strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


class Federation:
    """The workspace, its fx commands and the processes started from it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / "workspace"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.fx = Path(sys.executable).parent / "fx"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.libc = ctypes.CDLL(None, use_errno=True)

    def command(self, *arguments: str, cwd: Path | None = None) -> None:
        """One fx command, which must succeed."""
        try:
            done = subprocess.run(
                [str(self.fx), *arguments],
                cwd=cwd or self.workspace,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=SETUP_SECONDS,
            )
        except subprocess.TimeoutExpired:
            raise Failed(f"`fx {' '.join(arguments)}` took over {SETUP_SECONDS:.0f}s") from None
        if done.returncode != 0:
            raise Failed(
                f"`fx {' '.join(arguments)}` failed (exit {done.returncode}): "
                f"{tail(done.stdout + done.stderr)}"
            )

    def expect(self, path: str, after: str) -> None:
        """OpenFL's PKI commands report some failures on stdout and still exit 0."""
        if not (self.workspace / path).exists():
            raise Failed(f"{after} did not write {self.workspace / path}")

    def build(self, clients: int, params: int, rounds: int, port: int) -> list[str]:
        """The workspace, its plan and a CA-signed certificate for every participant."""
        self.command(
            "workspace", "create", "--prefix", "workspace", "--template", "no-op", cwd=self.root
        )
        shutil.copyfile(__file__, self.workspace / "src" / "openfl_run.py")
        plan = {
            "aggregator": {
                "defaults": "plan/defaults/aggregator.yaml",
                "template": "openfl.component.Aggregator",
                "settings": {"rounds_to_train": rounds},
            },
            "collaborator": {
                "defaults": "plan/defaults/collaborator.yaml",
                "template": "openfl.component.Collaborator",
            },
            "data_loader": {"template": "src.openfl_run.TinyData"},
            "task_runner": {
                "template": "src.openfl_run.NudgeRunner",
                "settings": {"params": params},
            },
            "network": {
                "defaults": "plan/defaults/network.yaml",
                "settings": {
                    "agg_addr": HOST,
                    "agg_port": port,
                    "use_tls": True,
                    "require_client_auth": True,
                    "client_reconnect_interval": 1,
                },
            },
            "assigner": {
                "defaults": "plan/defaults/assigner.yaml",
                "settings": {
                    "task_groups": [
                        {
                            "name": "learning",
                            "percentage": 1.0,
                            "tasks": ["aggregated_model_validation", "train"],
                        }
                    ]
                },
            },
            "compression_pipeline": {"defaults": "plan/defaults/compression_pipeline.yaml"},
            "tasks": {
                "aggregated_model_validation": {
                    "function": "validate_task",
                    "kwargs": {"apply": "global"},
                },
                "train": {"function": "train_task", "kwargs": {}},
            },
        }
        (self.workspace / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
        (self.workspace / "plan" / "cols.yaml").write_text("collaborators: []\n")
        (self.workspace / "plan" / "data.yaml").write_text("")

        self.command("plan", "initialize")
        self.expect("save/init.pbuf", "`fx plan initialize`")
        self.command("workspace", "certify")
        self.expect("cert/cert_chain.crt", "`fx workspace certify`")
        self.command("aggregator", "generate-cert-request", "--fqdn", HOST)
        self.command("aggregator", "certify", "--fqdn", HOST, "--silent")
        self.expect(f"cert/server/agg_{HOST}.crt", "`fx aggregator certify`")
        names = [f"collaborator{i}" for i in range(1, clients + 1)]
        for i, name in enumerate(names, start=1):
            self.command("collaborator", "create", "-n", name, "-d", str(i), "--silent")
            self.command(
                "collaborator", "generate-cert-request", "-n", name, "--silent", "--skip-package"
            )
            self.command("collaborator", "certify", "-n", name, "--silent")
            self.expect(f"cert/client/col_{name}.crt", f"`fx collaborator certify -n {name}`")
        return names

    def _die_with_driver(self) -> None:
        """Runs in each child before exec: the kernel kills it if this driver dies, even by
        SIGKILL (a harness's timeout), so no federation outlives its driver."""
        self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def spawn(self, name: str, *arguments: str, pipe: bool = False) -> subprocess.Popen[bytes]:
        """An fx process in its own session; its output goes to logs/<name>.log, or to a pipe."""
        with contextlib.ExitStack() as files:
            out = (
                subprocess.PIPE
                if pipe
                else files.enter_context((self.logs / f"{name}.log").open("wb"))
            )
            process = subprocess.Popen(
                [str(self.fx), *arguments],
                cwd=self.workspace,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._die_with_driver,
            )
        self.processes.append((name, process))
        return process

    def log_tail(self, name: str) -> str:
        log = self.logs / f"{name}.log"
        return tail(log.read_bytes()) if log.exists() else "(no output)"

    def run(self, names: list[str], rounds: int, port: int) -> dict[str, object]:
        """Start the aggregator, then the collaborators once it listens; time each round."""
        started = time.monotonic()
        aggregator = self.spawn("aggregator", "aggregator", "start", pipe=True)
        assert aggregator.stdout is not None
        log = (self.logs / "aggregator.log").open("wb")
        selector = selectors.DefaultSelector()
        selector.register(aggregator.stdout, selectors.EVENT_READ)
        ends: list[float] = []
        pending = b""
        collaborators_started = False
        try:
            while len(ends) < rounds:
                for _ in selector.select(timeout=0.5 if collaborators_started else 0.05):
                    chunk = os.read(aggregator.stdout.fileno(), 1 << 16)
                    now = time.monotonic()
                    if not chunk:
                        aggregator.wait()
                        raise Failed(
                            f"the aggregator exited (code {aggregator.returncode}) after "
                            f"{len(ends)} of {rounds} rounds: {self.log_tail('aggregator')}"
                        )
                    log.write(chunk)
                    log.flush()
                    *lines, pending = (pending + chunk).split(b"\n")
                    ends += [now for line in lines if ROUND_END.search(line)]
                last = ends[-1] if ends else started
                if time.monotonic() - last > STALL_SECONDS:
                    raise Failed(
                        f"round {len(ends) + 1} of {rounds} did not finish within "
                        f"{STALL_SECONDS:.0f}s; aggregator: {self.log_tail('aggregator')}; "
                        f"{names[0]}: {self.log_tail(names[0])}"
                    )
                if not collaborators_started:
                    if listening(port):
                        for name in names:
                            self.spawn(name, "collaborator", "start", "-n", name)
                        collaborators_started = True
                    elif time.monotonic() - started > LISTEN_SECONDS:
                        raise Failed(
                            f"the aggregator did not listen on {HOST}:{port} within "
                            f"{LISTEN_SECONDS:.0f}s: {self.log_tail('aggregator')}"
                        )
                for name, process in self.processes[1:]:
                    if process.poll() is not None and len(ends) < rounds:
                        raise Failed(
                            f"{name} exited (code {process.returncode}) after {len(ends)} of "
                            f"{rounds} rounds: {self.log_tail(name)}"
                        )
        finally:
            selector.close()
            log.close()
        bounds = [started, *ends[:rounds]]
        return {
            "round_seconds": [b - a for a, b in itertools.pairwise(bounds)],
            "wall_seconds": bounds[-1] - started,
        }

    def stop(self) -> None:
        """Every process this run started: SIGTERM to its session, SIGKILL if it lingers."""
        for _, process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, type=Path, help="an empty folder to work in")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if min(args.clients, args.params, args.rounds) < 1:
        parser.error("--clients, --params and --rounds must be at least 1")
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
        print(
            f"openfl_run: OpenFL 1.9 calls np.reshape(newshape=...), which NumPy "
            f"{np.__version__} no longer has; install numpy<2.4 into {sys.prefix}",
            file=sys.stderr,
        )
        return 1
    # A plain `kill` of this driver should still stop the federation (see Federation.stop).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    federation = Federation(args.root.resolve())
    port = free_port()
    try:
        names = federation.build(args.clients, args.params, args.rounds, port)
        result = federation.run(names, args.rounds, port)
    except Failed as exc:
        print(f"openfl_run: {exc}\n(workspace and logs: {args.root})", file=sys.stderr)
        return 1
    finally:
        federation.stop()
    args.out.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
