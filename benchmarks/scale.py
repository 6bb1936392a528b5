"""Scale and speed: memory for large models and round overhead against the machine's floor.

Each run is a real federation: the aggregator and N collaborators as separate processes
over mutual TLS on 127.0.0.1 (``bastion.sim.processes.LocalFederation``), FedAvg, a NumPy
model (``NumpyRunner``) whose training step nudges every weight in place.

    python benchmarks/scale.py memory --size-mb 100 --collaborators 3 10
    python benchmarks/scale.py memory --size-mb 3072 --layout one many --collaborators 2
    python benchmarks/scale.py overhead --params 1000000 --collaborators 10 --rounds 3
    python benchmarks/scale.py chunks --params 1000000 --collaborators 10 --chunk-mib auto 4 0.125

``memory``: the aggregator's peak RSS (VmHWM) above its idle RSS (model loaded, server
listening, no collaborator yet), and each collaborator's peak above its idle RSS (recorded
by the task code when its runner is built, before any network traffic).
``overhead``: seconds per round (the aggregator's own round timings in
``logs/metrics.jsonl``, and from one round's opening to the next, which adds the
checkpoint written between them) against the floor measured in the same run: bytes moved
(N models down, N up) at the loopback bandwidth measured between two processes, plus
N weighted accumulates at the memory bandwidth measured with NumPy. The mTLS floor puts the
same bytes through mutual-TLS connections between two processes instead (as many streams as
there are cores, up to N): the price of encryption on this machine, which any transport that
keeps the federation's TLS pays before it does anything else. Both bandwidths are measured
before and after each federation and the best is used, so a slow measurement cannot flatter
the ratio.
Each row also has the rounds' anatomy (after the first round, medians): round opened to
the first result accepted, first to last result, last result to the round's record, record
to the next round opened, from the timestamps of ``logs/metrics.jsonl``.
``chunks``: the same federation with each ``network.chunk_mib`` in turn (alternated over
``--repeats``): steady round and the aggregator's and collaborators' peak memory per chunk
size, the evidence behind ``framing.Chunking``'s adaptive rule.
Results go to ``benchmarks/results/`` as JSON; ``report.py`` writes the Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bastion.pki import Role, init_ca, issue
from bastion.sim.processes import LocalFederation
from bastion.workspace.initialize import initialize_plan
from bastion.workspace.templates import create_workspace
from bastion.workspace.verify import measure, sign

RESULTS = Path(__file__).parent / "results"

TASK = '''
import os
from pathlib import Path

import numpy as np

from bastion.runners.numpy import NumpyRunner

TENSOR_PARAMS = 16 * 1024 * 1024  # 64 MiB float32 tensors in the "many" layout


class BigModel:
    """Float32 tensors, initialized (resident) like a real model's; fit nudges them in place."""

    def __init__(self, params, layout, seed):
        if layout == "one":
            rows = 1000
            sizes = [("dense.weight", (rows, params // rows))]
        else:
            sizes, left, i = [], params, 0
            while left > 0:
                n = min(TENSOR_PARAMS, left)
                sizes.append((f"layer{i}.weight", (n,)))
                left, i = left - n, i + 1
        self.weights = {n: np.full(shape, 0.01, dtype=np.float32) for n, shape in sizes}
        self.step = np.float32(0.001 * (seed + 1))

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights

    def fit(self, x, y, **args):
        for value in self.weights.values():
            value += self.step
        return {"loss": 1.0}

    def evaluate(self, x, y, **args):
        return {"accuracy": 0.5}


def _rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def build_runner(params, layout="one", seed=0):
    runner = NumpyRunner(BigModel(params, layout, seed))
    out = os.environ.get("BASTION_BENCH_IDLE_DIR")
    if out:
        Path(out, f"{os.getpid()}.idle").write_text(str(_rss()))
    return runner
'''


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, object]:
    mem = _status_meminfo("MemTotal")
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 2**30, 1),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "kernel": platform.release(),
    }


def _status_meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- the floor


def loopback_bandwidth(total_bytes: int = 512 * 2**20, chunk: int = 4 * 2**20) -> float:
    """Bytes/s from one process to another over a TCP socket on 127.0.0.1 (no TLS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(('127.0.0.1',{port}));b=bytearray({chunk})\n"
        f"left={total_bytes}\n"
        "while left>0:\n n=s.send(memoryview(b)[:min(len(b),left)]);left-=n\n"
        "s.shutdown(socket.SHUT_WR);s.recv(1)\n"
    )
    sender = subprocess.Popen([sys.executable, "-c", code])
    conn, _ = server.accept()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    received, started = 0, time.perf_counter()
    while received < total_bytes:
        n = conn.recv_into(view)
        if n == 0:
            break
        received += n
    seconds = time.perf_counter() - started
    conn.close()
    server.close()
    sender.wait()
    return received / seconds


_TLS_SENDER = """
import socket, ssl, sys
port, streams, total, chunk, pki = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import threading
context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki + "/ca.crt")
context.load_cert_chain(pki + "/site-1.crt", pki + "/site-1.key")
payload = memoryview(bytearray(chunk))
def send():
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
        left = total // streams
        while left > 0:
            s.sendall(payload[: min(chunk, left)])
            left -= min(chunk, left)
        s.recv(1)
threads = [threading.Thread(target=send) for _ in range(streams)]
for t in threads: t.start()
for t in threads: t.join()
"""


def mtls_loopback_bandwidth(
    streams: int, total_bytes: int = 512 * 2**20, chunk: int = 4 * 2**20
) -> float:
    """Bytes/s from one process to another over ``streams`` mutual-TLS connections on
    127.0.0.1 (TLS 1.3, the federation's kind of certificates), receiving into a reused
    buffer: what any encrypted transport pays per byte on this machine before it does
    anything else. Two or more streams let the encryption of both ends use every core."""
    with tempfile.TemporaryDirectory(prefix="bastion-tls-floor-") as tmp:
        pki = Path(tmp)
        init_ca(pki)
        issue(pki, "aggregator", Role.AGGREGATOR, hosts=["127.0.0.1"])
        issue(pki, "site-1", Role.COLLABORATOR)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
        context.load_cert_chain(pki / "aggregator.crt", pki / "aggregator.key")
        context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(streams)
        listener.settimeout(60)  # a sender that failed its handshake must not hang the run
        port = listener.getsockname()[1]
        args = [str(port), str(streams), str(total_bytes), str(chunk), str(pki)]
        sender = subprocess.Popen([sys.executable, "-c", _TLS_SENDER, *args])
        received = [0] * streams

        def receive(index: int, raw: socket.socket) -> None:
            with context.wrap_socket(raw, server_side=True) as conn:
                view = memoryview(bytearray(chunk))
                while received[index] < total_bytes // streams:
                    n = conn.recv_into(view)
                    if n == 0:
                        break
                    received[index] += n
                conn.sendall(b"k")

        accepted = [listener.accept()[0] for _ in range(streams)]
        started = time.perf_counter()
        threads = [
            threading.Thread(target=receive, args=(i, raw)) for i, raw in enumerate(accepted)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        listener.close()
        sender.wait()
    return sum(received) / seconds


def accumulate_seconds(params: int) -> float:
    """One weighted accumulate of a float32 model into a float32 delta sum (best of 3), in
    buffers already resident: the arithmetic alone. A fresh temporary per try measured the
    page faults of a model-sized allocation instead, 0.25-0.99 s for 1 GiB on one VM."""
    total = np.zeros(params, dtype=np.float32)
    update = np.full(params, 0.5, dtype=np.float32)
    base = np.full(params, 0.25, dtype=np.float32)
    step = np.ones(params, dtype=np.float32)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        np.subtract(update, base, out=step)
        step *= np.float32(3.0)
        total += step
        best = min(best, time.perf_counter() - started)
    return best


# --------------------------------------------------------------------------- a federation


def build_workspace(
    root: Path,
    params: int,
    layout: str,
    collaborators: int,
    rounds: int,
    poll: float,
    chunk_mib: str | None = None,
) -> Path:
    workspace = create_workspace(
        root / "ws", "numpy_logreg_digits", collaborators=collaborators, rounds=rounds
    )
    (workspace / "big_task.py").write_text(TASK)
    plan = yaml.safe_load((workspace / "plan.yaml").read_text())
    plan["tasks"] = [{"name": "train", "kind": "train"}]
    plan["task_runner"] = {
        "path": "big_task:build_runner",
        "args": {"params": params, "layout": layout},
    }
    plan.setdefault("timeouts", {})["poll_seconds"] = poll
    plan.setdefault("network", {})["max_update_mib"] = max(4096, params * 4 // 2**20 + 64)
    if chunk_mib is not None:
        plan["network"]["chunk_mib"] = chunk_mib if chunk_mib == "auto" else float(chunk_mib)
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
    return workspace


def round_anatomy(records: list[dict[str, Any]]) -> dict[str, float]:
    """Where the training rounds after the first spend their time, medians in seconds, from
    the metrics log's timestamps: round opened -> first result accepted -> last result ->
    round recorded -> next round opened."""
    opened = {r["round"]: r["time"] for r in records if r.get("event") == "round_start"}
    closed = {
        r["round"]: r["time"]
        for r in records
        if r.get("event") == "round" and not r.get("final_evaluation")
    }
    phases: dict[str, list[float]] = {
        "to_first_result": [],
        "first_to_last_result": [],
        "last_result_to_record": [],
        "record_to_next_open": [],
    }
    for number in sorted(closed):
        results = sorted(
            r["time"] for r in records if r.get("event") == "task" and r.get("round") == number
        )
        if number < 2 or not results or number not in opened:
            continue
        phases["to_first_result"].append(results[0] - opened[number])
        phases["first_to_last_result"].append(results[-1] - results[0])
        phases["last_result_to_record"].append(closed[number] - results[-1])
        if number + 1 in opened:
            phases["record_to_next_open"].append(opened[number + 1] - closed[number])
    return {name: float(np.median(values)) for name, values in phases.items() if values}


def round_periods(records: list[dict[str, Any]]) -> list[float]:
    """Seconds from each training round's opening to the next one's, after the first round:
    what a round costs the federation, the checkpoint between rounds included (a round's
    own ``seconds`` stop when it is recorded)."""
    opened = {r["round"]: r["time"] for r in records if r.get("event") == "round_start"}
    return [opened[n + 1] - opened[n] for n in sorted(opened) if n >= 2 and n + 1 in opened]


def _steal_seconds() -> float:
    """CPU time the hypervisor gave to others, all CPUs together (0 on bare metal): a run
    that lost much of it measured a busier host, not slower code."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def _children_cpu() -> float:
    """User + system seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_federation(
    params: int,
    layout: str,
    collaborators: int,
    rounds: int,
    poll: float = 0.5,
    chunk_mib: str | None = None,
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="bastion-scale-"))
    idle_dir = root / "idle"
    idle_dir.mkdir()
    try:
        workspace = build_workspace(root, params, layout, collaborators, rounds, poll, chunk_mib)
        started = time.monotonic()
        cpu_before = _children_cpu()
        steal_before = _steal_seconds()
        federation = LocalFederation(workspace, extra_env={"BASTION_BENCH_IDLE_DIR": str(idle_dir)})
        with federation:
            federation.start_aggregator(timeout=600)
            assert federation.aggregator_process is not None
            aggregator = federation.aggregator_process.pid
            idle = _status(aggregator, "VmRSS")
            for name in federation.collaborators or []:
                federation.start_collaborator(name)
            pids = {n: p.pid for n, p in federation.collaborator_processes.items()}
            peaks = dict.fromkeys(pids, 0)
            peak = 0
            while federation.aggregator_process.poll() is None:
                try:
                    peak = max(peak, _status(aggregator, "VmHWM"))
                except (FileNotFoundError, ProcessLookupError):
                    break
                for name, pid in pids.items():
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        peaks[name] = max(peaks[name], _status(pid, "VmHWM"))
                time.sleep(0.05)
            codes = federation.wait(timeout=1800)
        wall = time.monotonic() - started
        cpu = _children_cpu() - cpu_before
        steal = _steal_seconds() - steal_before
        if any(codes.values()):
            log = (workspace / "logs" / "aggregator.log").read_text()[-3000:]
            raise SystemExit(f"federation failed: {codes}\n{log}")
        idles = {
            name: int((idle_dir / f"{pid}.idle").read_text())
            for name, pid in pids.items()
            if (idle_dir / f"{pid}.idle").exists()
        }
        records = [
            json.loads(line)
            for line in (workspace / "logs" / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        seconds = [
            float(r["seconds"])
            for r in records
            if "seconds" in r and not r.get("final_evaluation") and "round" in r
        ]
        anatomy = round_anatomy(records)
        periods = round_periods(records)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    model_bytes = params * 4
    above = {n: (peaks[n] - idles.get(n, 0)) for n in pids}
    return {
        "params": params,
        "layout": layout,
        "collaborators": collaborators,
        "rounds": rounds,
        "chunk_mib": chunk_mib or "plan default",
        "model_mb": model_bytes / 1e6,
        "aggregator_idle_mb": idle / 1e6,
        "aggregator_peak_mb": peak / 1e6,
        "aggregator_above_idle_over_model": (peak - idle) / model_bytes,
        "collaborator_idle_mb": {n: v / 1e6 for n, v in idles.items()},
        "collaborator_peak_mb": {n: v / 1e6 for n, v in peaks.items()},
        "collaborator_above_idle_over_model_max": max(above.values()) / model_bytes,
        "round_seconds": seconds,
        "round_period_seconds": periods,
        "wall_seconds": wall,
        # user + system seconds of every process of the federation, start-up included
        "cpu_seconds": cpu,
        # taken from this VM by its host while the federation ran, all CPUs together
        "steal_seconds": steal,
        "round_anatomy": anatomy,
    }


def _write(name: str, payload: dict[str, object]) -> Path:
    """``--out``: a bare file name lands in benchmarks/results/, a path is taken as given."""
    path = Path(name) if Path(name).parent != Path() else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def memory(args: argparse.Namespace) -> None:
    rows = []
    for size in args.size_mb:
        params = int(size * 2**20) // 4
        for layout in args.layout:
            for n in args.collaborators:
                row = run_federation(params, layout, n, args.rounds, chunk_mib=args.chunk_mib)
                rows.append(row)
                print(
                    f"{size:>7} MiB {layout:>4} x{n:<3} aggregator peak {row['aggregator_peak_mb']:.0f} MB "
                    f"(above idle {row['aggregator_above_idle_over_model']:.2f}x model), "
                    f"collaborators above idle <= {row['collaborator_above_idle_over_model_max']:.2f}x, "
                    f"rounds {row['round_seconds']}",
                    flush=True,
                )
    path = _write(args.out, {"machine": machine(), "label": args.label, "results": rows})
    print(f"written to {path}")


def overhead(args: argparse.Namespace) -> None:
    # The floors are measured before and after each federation and the best kept: a
    # measurement the host slowed down would make the floor look lower, the ratio better.
    tls_streams = max(1, min(args.collaborators, os.cpu_count() or 1))
    plain_samples = [loopback_bandwidth()]
    tls_samples = [mtls_loopback_bandwidth(tls_streams)]
    rows = []
    for params in args.params:
        accumulate = accumulate_seconds(params)
        row = run_federation(
            params, "one", args.collaborators, args.rounds, poll=args.poll, chunk_mib=args.chunk_mib
        )
        plain_samples.append(loopback_bandwidth())
        tls_samples.append(mtls_loopback_bandwidth(tls_streams))
        bandwidth, tls_bandwidth = max(plain_samples), max(tls_samples)
        moved = 2 * args.collaborators * params * 4
        floor = moved / bandwidth + args.collaborators * accumulate
        tls_floor = moved / tls_bandwidth + args.collaborators * accumulate
        steady = float(np.median(row["round_seconds"][1:] or row["round_seconds"]))
        row.update(
            {
                "loopback_gb_s": bandwidth / 1e9,
                "loopback_gb_s_samples": [b / 1e9 for b in plain_samples],
                "mtls_loopback_gb_s": tls_bandwidth / 1e9,
                "mtls_loopback_gb_s_samples": [b / 1e9 for b in tls_samples],
                "mtls_streams": tls_streams,
                "accumulate_seconds": accumulate,
                "bytes_moved_per_round": moved,
                "floor_seconds": floor,
                "mtls_floor_seconds": tls_floor,
                "steady_round_seconds": steady,
                "steady_over_floor": steady / floor,
                "steady_over_mtls_floor": steady / tls_floor,
            }
        )
        if row["round_period_seconds"]:
            period = float(np.median(row["round_period_seconds"]))
            row.update({"steady_period_seconds": period, "period_over_floor": period / floor})
        rows.append(row)
        print(
            f"{params:>12,} params x{args.collaborators}: steady round {steady:.3f}s, "
            f"floor {floor:.3f}s (loopback {bandwidth / 1e9:.2f} GB/s), "
            f"{row['steady_over_floor']:.1f}x the floor; "
            f"mTLS floor {tls_floor:.3f}s ({tls_bandwidth / 1e9:.2f} GB/s over {tls_streams} "
            f"streams), {row['steady_over_mtls_floor']:.1f}x; "
            + (
                f"opening to opening {row['steady_period_seconds']:.3f}s "
                f"({row['period_over_floor']:.1f}x); "
                if "steady_period_seconds" in row
                else ""
            )
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in row["round_anatomy"].items()),
            flush=True,
        )
    path = _write(args.out, {"machine": machine(), "label": args.label, "results": rows})
    print(f"written to {path}")


def chunks(args: argparse.Namespace) -> None:
    rows = []
    for repeat in range(args.repeats):
        for chunk_mib in args.chunk_mib:
            row = run_federation(
                args.params, args.layout, args.collaborators, args.rounds, chunk_mib=chunk_mib
            )
            steady = row["round_seconds"][1:] or row["round_seconds"]
            row.update({"repeat": repeat + 1, "steady_round_seconds": float(np.median(steady))})
            rows.append(row)
            print(
                f"chunk_mib {chunk_mib:>5}: steady round {row['steady_round_seconds']:.3f}s, "
                f"aggregator above idle {row['aggregator_above_idle_over_model']:.2f}x, "
                f"collaborators <= {row['collaborator_above_idle_over_model_max']:.2f}x the model",
                flush=True,
            )
    path = _write(args.out, {"machine": machine(), "label": args.label, "results": rows})
    print(f"written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--size-mb", type=float, nargs="+", default=[100.0])
    mem.add_argument("--layout", nargs="+", choices=["one", "many"], default=["one"])
    mem.add_argument("--collaborators", type=int, nargs="+", default=[2])
    mem.add_argument("--rounds", type=int, default=2)
    mem.add_argument("--out", default="scale_memory.json")
    mem.add_argument("--label", default="after")
    mem.add_argument("--chunk-mib", help="the plan's network.chunk_mib (default: the plan's)")
    over = sub.add_parser("overhead")
    over.add_argument("--params", type=int, nargs="+", default=[1_000_000])
    over.add_argument("--collaborators", type=int, default=10)
    over.add_argument("--rounds", type=int, default=3)
    over.add_argument("--poll", type=float, default=0.5)
    over.add_argument("--out", default="scale_overhead.json")
    over.add_argument("--label", default="after")
    over.add_argument("--chunk-mib", help="the plan's network.chunk_mib (default: the plan's)")
    sweep = sub.add_parser("chunks")
    sweep.add_argument("--params", type=int, default=1_000_000)
    sweep.add_argument("--layout", choices=["one", "many"], default="one")
    sweep.add_argument("--collaborators", type=int, default=10)
    sweep.add_argument("--rounds", type=int, default=6)
    sweep.add_argument("--chunk-mib", nargs="+", default=["auto", "4", "0.25", "0.125"])
    sweep.add_argument("--repeats", type=int, default=2)
    sweep.add_argument("--out", default="scale_chunks.json")
    sweep.add_argument("--label", default="after")
    args = parser.parse_args()
    {"memory": memory, "overhead": overhead, "chunks": chunks}[args.command](args)


if __name__ == "__main__":
    main()
