"""Write benchmarks/results/scale.md from the JSON that ``scale.py`` wrote (before and after)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

#: The runs ``scale.png`` draws unless told others (``--memory``, ``--overhead``): the
#: figures the README quotes.
PLOTTED_MEMORY = ("scale_memory_100mb_session5.json", "scale_memory_3gib_session5.json")
PLOTTED_OVERHEAD = (
    "scale_overhead_1m_session5_final.json",
    "scale_overhead_10m_100m_x10_session6.json",
    "scale_overhead_1gib_session5_final.json",
)
#: The bounds of the memory figures (peak above idle, as a multiple of the model).
BOUND_LARGE_MODEL = 2.0
BOUND_25M_TEN_SITES = 2.5


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def memory_rows(payload: dict) -> list[str]:
    rows = []
    for r in payload["results"]:
        collab = r["collaborator_peak_mb"]
        idles = r["collaborator_idle_mb"]
        worst = max(collab, key=lambda n: collab[n] - idles.get(n, 0))
        rows.append(
            f"| {payload.get('label', '')} | {r['model_mb']:.0f} | {r['layout']} | {r['collaborators']} "
            f"| {r['aggregator_idle_mb']:.0f} | {r['aggregator_peak_mb']:.0f} "
            f"| {r['aggregator_above_idle_over_model']:.2f}× "
            f"| {idles.get(worst, 0):.0f} → {collab[worst]:.0f} "
            f"| {r['collaborator_above_idle_over_model_max']:.2f}× "
            f"| {', '.join(f'{s:.1f}' for s in r['round_seconds'])} |"
        )
    return rows


def _anatomy(row: dict) -> str:
    phases = row.get("round_anatomy")
    if not phases:
        return "—"
    keys = ("to_first_result", "first_to_last_result", "last_result_to_record")
    return " / ".join(f"{phases[k] * 1000:.0f}" for k in keys if k in phases)


def _period(row: dict) -> str:
    if "steady_period_seconds" not in row:
        return "—"
    return f"{row['steady_period_seconds']:.3f} ({row['period_over_floor']:.1f}×)"


def overhead_rows(payload: dict) -> list[str]:
    return [
        f"| {payload.get('label', '')} | {r['params']:,} | {r['collaborators']} "
        f"| {r['steady_round_seconds']:.3f} | {r['floor_seconds']:.3f} "
        f"| {r['steady_over_floor']:.1f}× | {_mtls(r)} | {_period(r)} | {_anatomy(r)} "
        f"| {r['loopback_gb_s']:.2f} | {r['wall_seconds']:.1f} | {_steal(r)} |"
        for r in payload["results"]
    ]


def _steal(row: dict) -> str:
    if "steal_seconds" not in row:
        return "—"
    return f"{row['steal_seconds']:.1f} ({row['steal_seconds'] / row['wall_seconds']:.0%})"


def _mtls(row: dict) -> str:
    if "mtls_floor_seconds" not in row:
        return "—"
    return (
        f"{row['mtls_floor_seconds']:.3f} ({row['mtls_loopback_gb_s']:.2f} GB/s) "
        f"{row['steady_over_mtls_floor']:.1f}×"
    )


def chunk_rows(payload: dict) -> list[str]:
    return [
        f"| {r['model_mb']:.0f} | {r['collaborators']} | {r['chunk_mib']} | {r['repeat']} "
        f"| {r['steady_round_seconds']:.3f} | {r['aggregator_above_idle_over_model']:.2f}× "
        f"| {r['collaborator_above_idle_over_model_max']:.2f}× |"
        for r in payload["results"]
    ]


def _plotted(names: Sequence[str]) -> list[dict]:
    rows = []
    for name in names:
        payload = _load(name)
        if payload is not None:
            rows += payload["results"]
    return rows


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.0f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def _memory_label(row: dict) -> str:
    size = _size(row["model_mb"] * 1e6)
    layout = "" if row["layout"] == "one" else f", {row['layout']} tensors"
    return f"{size}{layout}\n{row['collaborators']} sites"


def _overhead_label(row: dict) -> str:
    return f"{_size(row['params'] * 4)} model\n{row['collaborators']} sites"


def plot(path: Path, memory_files: Sequence[str], overhead_files: Sequence[str]) -> bool:
    """``scale.png``: memory above idle against its bounds, and rounds against their floors."""
    memory, overhead = _plotted(memory_files), _plotted(overhead_files)
    if not memory or not overhead:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    spots = range(len(memory))
    width = 0.38
    left.bar(
        [x - width / 2 for x in spots],
        [r["aggregator_above_idle_over_model"] for r in memory],
        width,
        label="aggregator",
        color="#2b6cb0",
    )
    left.bar(
        [x + width / 2 for x in spots],
        [r["collaborator_above_idle_over_model_max"] for r in memory],
        width,
        label="worst collaborator",
        color="#9c4221",
    )
    left.axhline(BOUND_LARGE_MODEL, color="grey", linestyle="--", label="bound, large models")
    left.axhline(BOUND_25M_TEN_SITES, color="grey", linestyle=":", label="bound, 25M x 10")
    left.set_xticks(list(spots), [_memory_label(r) for r in memory], fontsize=8)
    left.set_ylabel("peak RSS above idle / model size")
    left.set_title("Memory, FedAvg over mTLS")
    left.legend(fontsize=8)
    spots = range(len(overhead))
    width = 0.27
    bars = (
        ("steady round", "steady_round_seconds", "#2b6cb0"),
        ("mTLS floor", "mtls_floor_seconds", "#276749"),
        ("plain floor", "floor_seconds", "#a0aec0"),
    )
    for k, (label, key, color) in enumerate(bars):
        right.bar(
            [x + (k - 1) * width for x in spots],
            [r.get(key, 0.0) for r in overhead],
            width,
            label=label,
            color=color,
        )
    for x, r in zip(spots, overhead, strict=True):
        ratio = f"{r['steady_over_floor']:.1f}x plain"
        if "steady_over_mtls_floor" in r:
            ratio += f"\n{r['steady_over_mtls_floor']:.1f}x mTLS"
        right.annotate(
            ratio, (x - width, r["steady_round_seconds"]), ha="center", va="bottom", fontsize=8
        )
    right.set_yscale("log")
    low, high = right.get_ylim()
    right.set_ylim(low, high * 4)  # room for the ratios above the tallest bar
    right.set_xticks(list(spots), [_overhead_label(r) for r in overhead], fontsize=8)
    right.set_ylabel("seconds (log scale)")
    right.set_title("Round against the machine's floors, same run")
    right.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--memory",
        nargs="+",
        default=list(PLOTTED_MEMORY),
        help="result files (in benchmarks/results) whose memory rows scale.png draws",
    )
    parser.add_argument(
        "--overhead",
        nargs="+",
        default=list(PLOTTED_OVERHEAD),
        help="result files (in benchmarks/results) whose rounds scale.png draws",
    )
    args = parser.parse_args()
    lines = ["# Scale and speed (`benchmarks/scale.py`)", ""]
    machine = None
    memory: list[str] = []
    overhead: list[str] = []
    chunks: list[str] = []
    for path in sorted(RESULTS.glob("scale_*.json")):
        payload = json.loads(path.read_text())
        if "results" not in payload or not payload["results"]:
            continue
        machine = machine or payload.get("machine")
        if "repeat" in payload["results"][0]:
            chunks += chunk_rows(payload)
        elif "floor_seconds" in payload["results"][0]:
            overhead += overhead_rows(payload)
        elif "collaborator_peak_mb" in payload["results"][0]:
            memory += memory_rows(payload)
    if machine:
        lines += [
            "Machine: "
            + ", ".join(f"{k} {v}" for k, v in machine.items())
            + "; shared with other work while measured.",
            "",
        ]
    if memory:
        lines += [
            "## Memory: 2 or more collaborators over mTLS, FedAvg, NumPy runner",
            "",
            "Peak = VmHWM. Aggregator idle = model loaded, server listening, no collaborator yet; "
            "collaborator idle = runner built (model initialized), before any traffic.",
            "",
            "| code | model MB | layout | collabs | agg idle MB | agg peak MB | agg above idle / model "
            "| worst collab idle → peak MB | collab above idle / model | round seconds |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            *memory,
            "",
        ]
    if overhead:
        lines += [
            "## Round overhead: collaborators as processes over mTLS, trivial training",
            "",
            "Floor = (N models down + N up) ÷ loopback bandwidth (measured in the same run, "
            "between two processes, no TLS) + N weighted accumulates (NumPy, same run).",
            "",
            "mTLS floor (where measured): the same bytes over mutual-TLS connections between "
            "two processes (TLS 1.3, the federation's kind of certificates, as many streams as "
            "cores, up to N), plus the same accumulates: what encryption alone costs here.",
            "",
            "Anatomy (where measured): medians over the rounds after the first, in ms, from the "
            "round's opening to its first accepted result / from the first to the last result / "
            "from the last result to the round's record.",
            "",
            "Opening to opening (where measured): the median time from one round's opening "
            "to the next's, which adds the checkpoint written between them.",
            "",
            "Stolen CPU (where measured): the CPU time the virtual machine's host gave to others "
            "while the federation ran, all CPUs together, and as a share of the wall time; "
            "rows with much of it measured a busy host.",
            "",
            "| code | params | collabs | steady round s | floor s | round / floor "
            "| mTLS floor s (GB/s), round / it | opening to opening s | anatomy ms "
            "| loopback GB/s | wall s | stolen CPU s (of wall) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | --- |",
            *overhead,
            "",
        ]
    if chunks:
        lines += [
            "## Chunk size (`scale.py chunks`): the plan's `network.chunk_mib`, alternated",
            "",
            "`auto` (the default): each transfer in about 8 chunks of 256 KiB up to a cap, so "
            "512 KiB for the 4 MB model. When these rows were measured the cap was 4 MiB; it is "
            "now 960 KiB, under the aggregator's 1 MiB mmap threshold (1 GiB rounds 13-14 s -> "
            "10-12 s, 25M x 10 aggregator memory 2.4x -> 1.55x the model above idle). Memory "
            "above idle, as a multiple of the model (a 4 MB model's multiple is mostly "
            "per-stream buffers).",
            "",
            "| model MB | collabs | chunk_mib | repeat | steady round s | agg above idle / model "
            "| collab above idle / model |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
            *chunks,
            "",
        ]
    if (RESULTS / "peers.md").exists():
        lines += [
            "## Flower and OpenFL",
            "",
            "The same workload side by side: [peers.md](peers.md) (`python benchmarks/peers.py`).",
            "",
        ]
    if plot(RESULTS / "scale.png", args.memory, args.overhead):
        lines[2:2] = [
            "![memory above idle against its bounds; rounds against their floors](scale.png)",
            "",
        ]
    (RESULTS / "scale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
