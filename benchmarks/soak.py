"""Soak: a long federation under a random fault every few rounds; does the aggregator leak?

Runs the fault suite's federation (tests/faults/harness.py: real processes over mTLS, each
site behind its own fault proxy) for ROUNDS rounds with N collaborators and a model of
MODEL_MB megabytes, injects a seeded random fault every 3-5 rounds (kill -9 and restart of
a collaborator, SIGSTOP/SIGCONT, connection resets, a mid-stream drop, a latency spike),
and samples the aggregator's RSS and open file descriptors after every round. Writes
benchmarks/results/soak.json and soak.png.

    .venv/bin/python benchmarks/soak.py --rounds 200 --collaborators 10 --model-mb 10

The figure the target is read on is the aggregator's own: each round's record in the
metrics log carries ``resident_memory`` (RSS after the round closed and free pages were
given back, and open fds), so "RSS after round N" never depends on where an outside sample
lands among the next round's 10 MB transfers. The outside samples are kept beside it.

Each outside sample also holds the lowest RSS seen during the round (``rss_floor``: what stays
resident when no buffer is in flight), the thread count and the anonymous and [heap]
bytes; the result has the least-squares RSS slope over rounds 20.. for both. To bisect a
creep: ``--no-faults`` (does it need the faults?), ``--env KEY=VALUE`` (e.g.
MALLOC_ARENA_MAX=2 in every process), ``--name`` to keep runs apart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from faults.harness import FaultFederation, rss_and_fds  # noqa: E402
from support.federations import checkpoint_state  # noqa: E402

FAULTS = ("kill_collaborator", "stop_collaborator", "reset", "drop_mid_stream", "latency")


def inject(run: FaultFederation, rng: random.Random, round_number: int) -> dict[str, object]:
    kind, site = rng.choice(FAULTS), rng.choice(run.names)
    proxy = run.proxies[site]
    if kind == "kill_collaborator":
        process = run.federation.collaborator_processes[site]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        run.start_collaborator(site, port=proxy.port)
    elif kind == "stop_collaborator":
        pid = run.federation.collaborator_processes[site].pid
        os.kill(pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(pid, signal.SIGCONT)
    elif kind == "reset":
        proxy.reset_all()
    elif kind == "drop_mid_stream":
        proxy.drop_after = 4 * 1024 * 1024
    else:
        proxy.latency = 0.05
    return {"round": round_number, "kind": kind, "site": site}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--collaborators", type=int, default=10)
    parser.add_argument("--model-mb", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=3 * 3600)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="soak", help="Stem of the .json and .png written.")
    parser.add_argument(
        "--no-faults", action="store_true", help="Inject nothing: is a creep the faults' doing?"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Set in the environment of every process started (diagnostics, e.g. MALLOC_ARENA_MAX=2).",
    )
    args = parser.parse_args()
    for setting in args.env:
        key, _, value = setting.partition("=")
        os.environ[key] = value
    rng = random.Random(args.seed)
    extra = int(args.model_mb * 1024 * 1024 / 4)
    samples: list[dict[str, float]] = []
    faults: list[dict[str, object]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bastion-soak-") as tmp:
        run = FaultFederation(
            Path(tmp),
            collaborators=args.collaborators,
            rounds=args.rounds,
            extra=extra,
            plan_changes={"timeouts": {"round_seconds": 120, "min_results": 1}},
        )
        try:
            run.start_behind_proxies()
            pid = run.federation.aggregator_process.pid  # type: ignore[union-attr]
            seen, next_fault = 0, rng.randint(3, 5)
            floor: int | None = None  # the lowest RSS seen since the last sample
            while run.federation.aggregator_process.poll() is None:  # type: ignore[union-attr]
                if time.monotonic() - started > args.time_limit:
                    print(f"soak: stopped at the time limit ({args.time_limit:.0f}s)", flush=True)
                    break
                done = run.rounds_done()
                try:
                    current, _ = rss_and_fds(pid)
                    floor = current if floor is None else min(floor, current)
                except FileNotFoundError:
                    pass
                if done > seen:
                    seen = done
                    try:
                        rss, fds = rss_and_fds(pid)
                    except FileNotFoundError:
                        break
                    samples.append(
                        {
                            "round": done,
                            "rss": rss,
                            "rss_floor": min(rss, floor if floor is not None else rss),
                            "fds": fds,
                            "t": time.monotonic() - started,
                            **native_memory(pid),
                        }
                    )
                    floor = None
                    for proxy in run.proxies.values():
                        proxy.latency = 0.0
                    if not args.no_faults and done >= next_fault and done < args.rounds:
                        faults.append(inject(run, rng, done + 1))
                        next_fault = done + rng.randint(3, 5)
                    print(
                        f"round {done}: rss {rss / 2**20:.1f} MiB, fds {fds}, "
                        f"threads {samples[-1].get('threads')}, "
                        f"anon {samples[-1].get('anonymous', 0) / 2**20:.1f} MiB, "
                        f"heap {samples[-1].get('heap', 0) / 2**20:.1f} MiB",
                        flush=True,
                    )
                time.sleep(0.05)
            timed_out = run.federation.aggregator_process.poll() is None  # type: ignore[union-attr]
            codes = {} if timed_out else run.finish(timeout=300)
            held = after_each_round(run.records())
            state = checkpoint_state(run.last)
            violations = run.watcher.violations
        finally:
            run.close()
    # Training rounds only: the sample after the last one is the final evaluation, taken
    # while the aggregator shuts down.
    training = [s for s in samples if s["round"] <= args.rounds]
    by_round = {int(s["round"]): s for s in training}
    early = by_round.get(20) or training[min(19, len(training) - 1)]
    late = by_round.get(args.rounds) or training[-1]
    fds = [int(s["fds"]) for s in training if s["round"] >= 20]
    result = {
        "rounds": args.rounds,
        "collaborators": args.collaborators,
        "model_mb": args.model_mb,
        "seconds": round(time.monotonic() - started, 1),
        "stopped_at_time_limit": timed_out,
        "exit_codes": codes,
        "round_completed": state["round_completed"],
        "finished": state["finished"],
        "checkpoint_violations": violations,
        "faults": faults,
        "rss_round_20": early["rss"],
        "last_training_round_sampled": late["round"],
        "rss_last_training_round": late["rss"],
        "rss_growth_20_to_last": round(late["rss"] / early["rss"] - 1, 4),
        **window_medians(training),
        "rss_slope_mib_per_round_20_to_last": rss_slope(training),
        "rss_floor_slope_mib_per_round_20_to_last": rss_slope(training, key="rss_floor"),
        "no_faults": args.no_faults,
        "env": args.env,
        "fds_rounds_20_to_last": {"min": min(fds, default=0), "max": max(fds, default=0)},
        **growth_after_rounds(held, args.rounds),
        "after_each_round": held,
        "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(samples, held, faults, args.out / f"{args.name}.png")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("samples", "after_each_round")}, indent=1
        )
    )


def after_each_round(records: list[dict[str, object]]) -> list[dict[str, float]]:
    """The aggregator's own figures, from each training round's record: RSS once the round
    closed and free pages went back (the last record of a round wins: resumed rounds)."""
    held: dict[int, dict[str, float]] = {}
    for record in records:
        memory = record.get("resident_memory")
        if record.get("event") == "round" and not record.get("final_evaluation") and memory:
            figures = dict(memory)  # type: ignore[call-overload]
            held[int(record["round"])] = {  # type: ignore[call-overload]
                "round": int(record["round"]),  # type: ignore[call-overload]
                "rss": figures["rss_bytes"],
                "fds": figures["open_fds"],
            }
    return [held[r] for r in sorted(held)]


def growth_after_rounds(held: list[dict[str, float]], rounds: int) -> dict[str, object]:
    """Round 20 against the last training round, on the aggregator's own figures."""
    by_round = {int(h["round"]): h for h in held}
    if 20 not in by_round or not held:
        return {}
    early, late = by_round[20], by_round.get(rounds) or held[-1]
    fds = [int(h["fds"]) for h in held if h["round"] >= 20]
    return {
        "after_round_20_rss": early["rss"],
        "after_round_last": late["round"],
        "after_round_last_rss": late["rss"],
        "after_round_growth_20_to_last": round(late["rss"] / early["rss"] - 1, 4),
        "after_round_slope_mib_per_round_20_to_last": rss_slope(held),
        "after_round_fds_20_to_last": {"min": min(fds), "max": max(fds)},
    }


def native_memory(pid: int) -> dict[str, int]:
    """Threads, anonymous and heap-segment bytes of ``pid``: separates thread stacks and
    arenas (anonymous mappings) from the main heap when RSS creeps."""
    sample: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                sample["threads"] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                sample["anonymous"] = int(line.split()[1]) * 1024
        heap, in_heap = 0, False
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if "-" in line.split(" ", 1)[0]:
                in_heap = line.rstrip().endswith("[heap]")
            elif in_heap and line.startswith("Rss:"):
                heap += int(line.split()[1]) * 1024
        sample["heap"] = heap
    except OSError:
        pass
    return sample


def rss_slope(
    samples: list[dict[str, float]], first_round: int = 20, key: str = "rss"
) -> float | None:
    """Least-squares slope of ``key`` (RSS, or its floor during the round) over rounds
    ``first_round``.. in MiB per round: single samples swing by tens of MiB as 10 MB
    buffers come and go, a leak shows as a steady slope."""
    points = [
        (s["round"], s[key] / 2**20) for s in samples if s["round"] >= first_round and key in s
    ]
    if len(points) < 3:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return round(sum((x - mean_x) * (y - mean_y) for x, y in points) / spread, 4)


def window_medians(samples: list[dict[str, float]]) -> dict[str, float]:
    """Median RSS over rounds 11-30 and over the last 20: single samples swing by tens of
    MB as glibc returns or keeps freed 10 MB buffers, a leak moves the medians."""
    ordered = sorted(samples, key=lambda s: s["round"])
    early = sorted(s["rss"] for s in ordered if 11 <= s["round"] <= 30)
    late = sorted(s["rss"] for s in ordered[-20:])
    if not early or not late:
        return {}
    first, last = early[len(early) // 2], late[len(late) // 2]
    return {
        "rss_median_rounds_11_30": first,
        "rss_median_last_20": last,
        "rss_median_growth": round(last / first - 1, 4),
    }


def _plot(
    samples: list[dict[str, float]],
    held: list[dict[str, float]],
    faults: list[dict[str, object]],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [s["round"] for s in samples]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(rounds, [s["rss"] / 2**20 for s in samples], label="sampled from outside", lw=0.8)
    if all("rss_floor" in s for s in samples):
        top.plot(
            rounds, [s["rss_floor"] / 2**20 for s in samples], label="lowest in the round", lw=0.8
        )
    if held:
        top.plot(
            [h["round"] for h in held],
            [h["rss"] / 2**20 for h in held],
            label="after the round (aggregator's own figure)",
            color="black",
        )
    top.legend(loc="upper left")
    top.set_ylabel("RSS (MiB)")
    bottom.plot(rounds, [s["fds"] for s in samples], color="tab:orange", label="open fds")
    bottom.set_ylabel("open file descriptors")
    bottom.set_xlabel("round")
    for fault in faults:
        for axis in (top, bottom):
            axis.axvline(float(fault["round"]), color="grey", alpha=0.25, lw=0.8)  # type: ignore[arg-type]
    top.set_title("Soak: aggregator under a random fault every 3-5 rounds (grey lines)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
