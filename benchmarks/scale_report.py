"""Write benchmarks/results/scale.md from the JSON that ``scale.py`` wrote (before and after)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


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
        f"| {r['loopback_gb_s']:.2f} | {r['wall_seconds']:.1f} |"
        for r in payload["results"]
    ]


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


def main() -> None:
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
            "| code | params | collabs | steady round s | floor s | round / floor "
            "| mTLS floor s (GB/s), round / it | opening to opening s | anatomy ms "
            "| loopback GB/s | wall s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |",
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
    (RESULTS / "scale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
