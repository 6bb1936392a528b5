"""What each fault scenario ended in, collected during ``make faults`` and written as a table.

A scenario calls ``record(...)`` once it has asserted its invariants; a scenario that fails
is recorded by the conftest hook with its error. ``write`` turns the rows into
``benchmarks/results/faults.json`` and ``faults.md`` (only a full run writes them).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@dataclass
class Row:
    scenario: str
    point: str
    outcome: str  # "finished ..." or "stopped: <reason> ..." or "FAILED: ..."
    rounds_lost: int | None = None
    recover_seconds: float | None = None
    test: str = ""


ROWS: list[Row] = []


def record(
    scenario: str,
    point: str,
    outcome: str,
    rounds_lost: int | None = None,
    recover_seconds: float | None = None,
) -> None:
    """One scenario × injection point's outcome (the test id is added by the conftest)."""
    recover = None if recover_seconds is None else round(recover_seconds, 1)
    ROWS.append(Row(scenario, point, outcome, rounds_lost, recover))
    print(f"RESULT {scenario} | {point} | {outcome} | lost={rounds_lost} | recover={recover}")


def dump(path: Path) -> None:
    """This process's rows, for the process that writes the table."""
    path.write_text(json.dumps([asdict(r) for r in ROWS]))


def load(path: Path) -> None:
    """Rows another process dumped."""
    ROWS.extend(Row(**row) for row in json.loads(path.read_text()))


def write(seconds: float, directory: Path = RESULTS_DIR) -> None:
    """``faults.json`` (every row) and ``faults.md`` (the table) under ``directory``."""
    rows = sorted(ROWS, key=lambda r: (r.scenario, r.point))
    meta = {
        "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(seconds, 1),
        "python": platform.python_version(),
        "failed": sum(r.outcome.startswith("FAILED") for r in rows),
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "faults.json").write_text(
        json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=1) + "\n"
    )
    lines = [
        "# Fault-injection results (`make faults`, written by tests/faults/results.py)",
        "",
        f"{len(rows)} scenario × injection point runs, {meta['failed']} failed, "
        f"{meta['seconds']:.0f} s, {meta['written']}. Real processes over mTLS on 127.0.0.1; "
        "2 sites × 3 rounds unless the scenario says otherwise. *rounds lost*: rounds started "
        "again because of the fault; *recover*: from the fault (kill, stop, heal, restart) to "
        "the federation finished. Every row also asserts the invariants of "
        "tests/faults/README.md (same model as an undisturbed run where the scenario allows it, "
        "checkpoints whole and monotone, no stale temporaries, every round summarized, "
        "honest sites unblamed).",
        "",
        "| scenario | injection point | outcome | rounds lost | recover (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lost = "-" if r.rounds_lost is None else str(r.rounds_lost)
        recover = "-" if r.recover_seconds is None else f"{r.recover_seconds:.1f}"
        lines.append(f"| {r.scenario} | `{r.point}` | {r.outcome} | {lost} | {recover} |")
    (directory / "faults.md").write_text("\n".join(lines) + "\n")
