"""Round overhead side by side: Bastion, Flower's deployment engine and OpenFL's TaskRunner.

The same workload for each: N clients as separate processes on 127.0.0.1, a model of
``--params`` float32 weights, training that nudges every weight, FedAvg, ``--rounds``
rounds. Contenders alternate in each repetition (so a change of the machine's load hits
them alike), and the machine's floor (loopback bandwidth between two processes, the
weighted accumulate) is measured in the same repetition.

    python benchmarks/peers.py --repeats 3
    python benchmarks/peers.py --contenders bastion flower --repeats 5

Flower (flwr 1.42.0) and OpenFL (1.9, on NumPy < 2.4) are installed by this script into their own
virtualenvs under ``benchmarks/.cache/peers/`` (gitignored); a contender that cannot be
installed or run is skipped with the reason in the results. Bastion runs over mutual TLS;
Flower's SuperLink and SuperNodes run with ``--insecure`` (TLS would need their own PKI
setup; plain text only flatters Flower). Results: ``benchmarks/results/peers.json`` and
``peers.md`` (+ ``peers.png`` when matplotlib is present).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scale import accumulate_seconds, loopback_bandwidth, machine, run_federation  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache" / "peers"
FLOWER_APP = HERE / "peers" / "flower_app"
OPENFL_RUN = HERE / "peers" / "openfl_run.py"

PEERS = {
    "flower": ["flwr==1.42.0"],
    "openfl": ["openfl==1.9", "numpy<2.4"],  # 1.9 calls np.reshape(newshape=), gone in 2.4
}


class Skipped(Exception):
    """A contender that cannot be installed or run here; the message says why."""


# --------------------------------------------------------------------------- virtualenvs


def peer_python(name: str) -> Path:
    """The peer's own virtualenv, created and installed on first use (pinned versions)."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = CACHE / f"{name}-install.log"
    with log.open("w") as out:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", *PEERS[name]],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        tail = log.read_text()[-600:]
        raise Skipped(f"pip install {' '.join(PEERS[name])} failed (see {log}): {tail}")
    stamp.touch()
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Skipped(f"{what} exited with code {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise Skipped(f"{what} did not listen on port {port} within {timeout:.0f}s")


def stray_processes(marker: str) -> list[int]:
    """Processes this run started that left its process groups (Flower detaches its
    SuperExec and ServerApp), found by the run's unique address on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --------------------------------------------------------------------------- contenders


def run_bastion(args: argparse.Namespace) -> dict[str, object]:
    row = run_federation(args.params, "one", args.clients, args.rounds)
    return {"round_seconds": row["round_seconds"], "wall_seconds": row["wall_seconds"]}


def run_flower(args: argparse.Namespace) -> dict[str, object]:
    """SuperLink + N SuperNodes (processes), then ``flwr run`` of the app in peers/flower_app."""
    python = peer_python("flower")
    bin_dir = python.parent
    root = Path(tempfile.mkdtemp(prefix="bastion-peers-flower-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        home = root / "flwr-home"
        home.mkdir()
        link = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{link}"\ninsecure = true\n'
        )
        app = root / "app"
        shutil.copytree(FLOWER_APP, app)
        timings = root / "timings.json"
        # Flower starts its helpers (flower-superexec, flwr-serverapp) by name from PATH.
        path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": "", "PATH": path}
        logs = root / "logs"
        logs.mkdir()

        def spawn(name: str, command: list[str]) -> subprocess.Popen[bytes]:
            out = (logs / f"{name}.log").open("wb")
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
                start_new_session=True,
            )
            processes.append(process)
            return process

        started = time.monotonic()
        superlink = spawn(
            "superlink",
            [
                str(bin_dir / "flower-superlink"),
                "--insecure",
                "--port",
                str(link),
                "--database",
                str(root / "state.db"),
            ],
        )
        try:
            wait_for_port(link, 120, "flower-superlink", superlink)
        except Skipped as exc:
            tail = (logs / "superlink.log").read_text(errors="replace")[-600:]
            raise Skipped(f"{exc}: {tail}") from None
        for i in range(args.clients):
            spawn(
                f"supernode-{i}",
                [
                    str(bin_dir / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={args.clients}",
                ],
            )
        config = (
            f"num-server-rounds={args.rounds} params={args.params} clients={args.clients} "
            f"timings-file='{timings}'"
        )
        run = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(app), "bench", "--stream", "--run-config", config],
            env=env,
            cwd=root,
            capture_output=True,
            timeout=args.timeout,
        )
        deadline = time.monotonic() + args.timeout
        while not timings.exists() and time.monotonic() < deadline:
            if superlink.poll() is not None:
                break
            time.sleep(0.2)
        wall = time.monotonic() - started
        if not timings.exists():
            tail = (run.stdout + run.stderr).decode(errors="replace")[-800:]
            tail += (logs / "superlink.log").read_text(errors="replace")[-800:]
            raise Skipped(
                f"the Flower run wrote no timings (flwr run exit {run.returncode}): {tail}"
            )
        result = json.loads(timings.read_text())
        return {"round_seconds": result["round_seconds"], "wall_seconds": wall}
    finally:
        stop_all(processes)
        for pid in stray_processes(f"127.0.0.1:{link}") if "link" in locals() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def run_openfl(args: argparse.Namespace) -> dict[str, object]:
    """OpenFL's TaskRunner: an aggregator and N collaborators (processes) over mTLS, driven
    by peers/openfl_run.py inside OpenFL's virtualenv."""
    python = peer_python("openfl")
    if not OPENFL_RUN.exists():
        raise Skipped(
            f"benchmarks/peers/{OPENFL_RUN.name} (the OpenFL TaskRunner workspace driver) is not written yet"
        )
    root = Path(tempfile.mkdtemp(prefix="bastion-peers-openfl-"))
    try:
        out = root / "result.json"
        done = subprocess.run(
            [
                str(python),
                str(OPENFL_RUN),
                "--root",
                str(root),
                "--clients",
                str(args.clients),
                "--params",
                str(args.params),
                "--rounds",
                str(args.rounds),
                "--out",
                str(out),
            ],
            capture_output=True,
            timeout=args.timeout,
            env={**os.environ, "PYTHONPATH": "", "HOME": str(root)},
        )
        if done.returncode != 0 or not out.exists():
            tail = (done.stdout + done.stderr).decode(errors="replace")[-800:]
            raise Skipped(f"the OpenFL run failed (exit {done.returncode}): {tail}")
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)


CONTENDERS: dict[str, Callable[[argparse.Namespace], dict[str, object]]] = {
    "bastion": run_bastion,
    "flower": run_flower,
    "openfl": run_openfl,
}


# --------------------------------------------------------------------------- report


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def steady(rounds: list[float]) -> float:
    """The median round after the first (which includes start-up)."""
    return float(statistics.median(rounds[1:] or rounds))


def summarize(runs: list[dict[str, object]], contenders: list[str]) -> dict[str, dict[str, object]]:
    summary: dict[str, dict[str, object]] = {}
    for name in contenders:
        mine = [r for r in runs if r["contender"] == name and "steady_round_seconds" in r]
        skipped = [str(r["skipped"]) for r in runs if r["contender"] == name and "skipped" in r]
        if not mine:
            summary[name] = {"skipped": skipped[0] if skipped else "not run"}
            continue
        rounds = [float(r["steady_round_seconds"]) for r in mine]  # type: ignore[arg-type]
        ratios = [float(r["steady_over_floor"]) for r in mine]  # type: ignore[arg-type]
        walls = [float(r["wall_seconds"]) for r in mine]  # type: ignore[arg-type]
        summary[name] = {
            "repeats": len(mine),
            "steady_round_seconds_median": statistics.median(rounds),
            "steady_round_seconds_min": min(rounds),
            "steady_round_seconds_max": max(rounds),
            "steady_over_floor_median": statistics.median(ratios),
            "wall_seconds_median": statistics.median(walls),
        }
    bastion = summary.get("bastion", {}).get("steady_round_seconds_median")
    for name, row in summary.items():
        if name != "bastion" and bastion and "steady_round_seconds_median" in row:
            row["times_bastion"] = float(row["steady_round_seconds_median"]) / float(bastion)  # type: ignore[arg-type]
    return summary


def markdown(payload: dict[str, object]) -> str:
    settings = payload["settings"]
    assert isinstance(settings, dict)
    lines = [
        "# Round overhead side by side",
        "",
        f"{settings['clients']} clients as processes on 127.0.0.1, {settings['params']:,} float32 "
        f"parameters, trivial training, FedAvg, {settings['rounds']} rounds; contenders "
        f"alternated, {settings['repeats']} repetitions. Steady round = median of the rounds "
        "after the first; floor = bytes moved / loopback bandwidth + N weighted accumulates, "
        "measured in the same repetition.",
        "",
        f"Machine: {json.dumps(payload['machine'])}",
        "",
        "| contender | transport | steady round (s), median [min–max] | × floor | wall (s) | × Bastion |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    transport = {
        "bastion": "gRPC, mutual TLS",
        "flower": "SuperLink/SuperNode, insecure",
        "openfl": "gRPC, mutual TLS",
    }
    summary = payload["summary"]
    assert isinstance(summary, dict)
    for name, row in summary.items():
        if "skipped" in row:
            lines.append(f"| {name} | {transport[name]} | skipped: {row['skipped'][:200]} | | | |")
            continue
        times = f"{row['times_bastion']:.1f}×" if "times_bastion" in row else "1×"
        lines.append(
            f"| {name} | {transport[name]} | {row['steady_round_seconds_median']:.3f} "
            f"[{row['steady_round_seconds_min']:.3f}–{row['steady_round_seconds_max']:.3f}] | "
            f"{row['steady_over_floor_median']:.1f}× | {row['wall_seconds_median']:.1f} | {times} |"
        )
    lines += [
        "",
        "| repetition | contender | rounds (s) | floor (s) | load average (1/5/15 min) |",
        "| --- | --- | --- | --- | --- |",
    ]
    runs = payload["runs"]
    assert isinstance(runs, list)
    for run in runs:
        rounds = ", ".join(f"{x:.3f}" for x in run.get("round_seconds", []))
        lines.append(
            f"| {run['repetition']} | {run['contender']} | {rounds or run.get('skipped', '')[:80]} | "
            f"{run['floor_seconds']:.4f} | {run['load_average']} |"
        )
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, object], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summary = payload["summary"]
    assert isinstance(summary, dict)
    names = [n for n, r in summary.items() if "steady_round_seconds_median" in r]
    values = [summary[n]["steady_round_seconds_median"] for n in names]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar(names, values, color=["#2b6cb0", "#9c4221", "#276749"][: len(names)])
    axis.set_yscale("log")
    axis.set_ylabel("steady round (s, log scale)")
    floors = [float(r["floor_seconds"]) for r in payload["runs"]]  # type: ignore[union-attr]
    axis.axhline(statistics.median(floors), color="grey", linestyle="--", label="floor")
    axis.legend()
    axis.set_title("Round overhead, 10 clients, 1M float32")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS)
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--out", default="peers")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)

    runs: list[dict[str, object]] = []
    skipped: dict[str, str] = {}
    for repetition in range(1, args.repeats + 1):
        order = args.contenders if repetition % 2 else list(reversed(args.contenders))
        bandwidth = loopback_bandwidth()
        accumulate = accumulate_seconds(args.params)
        floor = 2 * args.clients * args.params * 4 / bandwidth + args.clients * accumulate
        for name in order:
            row: dict[str, object] = {
                "repetition": repetition,
                "contender": name,
                "floor_seconds": floor,
                "loopback_gb_s": bandwidth / 1e9,
                "load_average": load_average(),
            }
            if name in skipped:
                row["skipped"] = skipped[name]
                runs.append(row)
                continue
            try:
                row.update(CONTENDERS[name](args))
            except (Skipped, subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
                if not (CACHE / name / ".installed").exists():
                    skipped[name] = str(exc)  # cannot be installed (or driven): skip it from now on
                row["skipped"] = str(exc)
                print(f"{name}: skipped: {exc}", flush=True)
                runs.append(row)
                continue
            rounds = [float(x) for x in row["round_seconds"]]  # type: ignore[union-attr]
            row["steady_round_seconds"] = steady(rounds)
            row["steady_over_floor"] = steady(rounds) / floor
            row["load_average_after"] = load_average()
            runs.append(row)
            print(
                f"repetition {repetition} {name:>8}: rounds {[round(x, 3) for x in rounds]}, "
                f"steady {row['steady_round_seconds']:.3f}s = {row['steady_over_floor']:.1f}x "
                f"the floor {floor:.4f}s; load {row['load_average']}",
                flush=True,
            )
    payload: dict[str, object] = {
        "machine": machine(),
        "settings": {
            "clients": args.clients,
            "params": args.params,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "contenders": args.contenders,
        },
        "runs": runs,
    }
    payload["summary"] = summarize(runs, args.contenders)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(payload))
    if plot(payload, RESULTS / f"{args.out}.png"):
        print(f"plot: {RESULTS / (args.out + '.png')}")
    print(markdown(payload))


if __name__ == "__main__":
    main()
