"""The README's cross-machine flow, run literally: five parties in five folders, only the
files the README says travel copied between them, two hospitals on two different CSV files.

The commands are read from the README's block, so the README and this test cannot drift.
Substitutions, for one machine: the aggregator's host name ``agg.example.org`` becomes
``localhost`` (on a free port), the aggregator listens on 127.0.0.1 only, and each site's
``/data/NAME.csv`` is a demo table the template writes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import run_bastion

from bastion.metrics.log import read_metrics, round_summaries

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- cross-machine flow:"
SITES = ("hospital-a", "hospital-b")


def readme_commands() -> list[str]:
    """The bastion commands of the README's cross-machine block, comments stripped."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index(MARKER) :]
    block = block[
        block.index("```sh") + len("```sh") : block.index("```", block.index("```sh") + 5)
    ]
    commands = []
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        if command:
            commands.append(command)
    return commands


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Flow:
    """Runs README lines in the parties' folders, checking that each is really in the README."""

    def __init__(self, root: Path, port: int) -> None:
        self.lines = readme_commands()
        self.used: set[str] = set()
        self.port = port
        self.folders = {name: root / name for name in ("ca", "aggregator", "owner", *SITES)}
        for folder in self.folders.values():
            folder.mkdir()

    def line(self, start: str, **replace: str) -> list[str]:
        """The README line that starts with ``start``, with one-machine substitutions."""
        found = [line for line in self.lines if line.startswith(start)]
        assert len(found) == 1, f"the README's flow has no single line starting {start!r}"
        self.used.add(found[0])
        text = found[0]
        for old, new in replace.items():
            assert old in text, f"{old!r} is not in README line {text!r}"
            text = text.replace(old, new)
        words = shlex.split(text)
        assert words[0] == "bastion"
        return words[1:]

    def run(self, party: str, start: str, **replace: str) -> str:
        result = run_bastion(*self.line(start, **replace), cwd=self.folders[party], timeout=180)
        assert result.returncode == 0, f"{party}: {start}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def send(self, source: str, path: str, target: str, to: str = "") -> None:
        """A file travels from one party to another (the README's comments say which)."""
        destination = self.folders[target] / (to or Path(path).name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.folders[source] / path, destination)

    def start(self, party: str, start: str, *extra: str, **replace: str) -> subprocess.Popen:
        log = (self.folders[party] / f"{party}.out").open("w")
        return subprocess.Popen(
            [sys.executable, "-m", "bastion", *self.line(start, **replace), *extra],
            cwd=self.folders[party],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"},
        )


@pytest.mark.slow
def test_the_readme_cross_machine_flow_trains_two_hospitals_on_their_own_csvs(
    tmp_path: Path,
) -> None:
    port = _free_port()
    flow = Flow(tmp_path, port)
    agg = "agg.example.org"

    # 1. The model owner writes and checks the workspace.
    flow.run("owner", "bastion workspace create", **{agg: f"localhost:{port}"})
    flow.run("owner", "bastion plan validate")
    # 2. The CA.
    flow.run("ca", "bastion pki init")
    # 3. Keys and requests where they live; requests travel to the CA.
    flow.run("aggregator", "bastion pki request aggregator", **{agg: "localhost"})
    flow.send("aggregator", "pki/aggregator.csr", "ca")
    for site in SITES:
        flow.run(site, "bastion pki request hospital-a", **{"hospital-a": site})
        flow.send(site, f"pki/{site}.csr", "ca")
    flow.run("owner", "bastion pki request owner")
    flow.send("owner", "pki/owner.csr", "ca")
    # 4. The CA signs; each certificate and ca.crt travel back into the party's pki/.
    flow.run("ca", "bastion pki sign aggregator.csr")
    for site in SITES:
        flow.run("ca", "bastion pki sign hospital-a.csr", **{"hospital-a": site})
    flow.run("ca", "bastion pki sign owner.csr")
    for party, name in [("aggregator", "aggregator"), ("owner", "owner")] + [(s, s) for s in SITES]:
        flow.send("ca", f"pki/{name}.crt", party, f"pki/{name}.crt")
        flow.send("ca", "pki/ca.crt", party, "pki/ca.crt")
    # 5. The model owner initializes, measures, signs and exports.
    flow.run("owner", "bastion plan initialize")
    flow.run("owner", "bastion workspace measure")
    flow.run("owner", "bastion workspace sign")
    flow.run("owner", "bastion workspace export")
    # 6. The archive travels; everyone imports it.
    for party in ("aggregator", *SITES):
        flow.send("owner", "fl.tar.gz", party)
        flow.run(party, "bastion workspace import")
    # Each hospital has its own table: two different files (demo data from the template).
    rows = {}
    for site in SITES:
        folder = flow.folders[site]
        subprocess.run(
            [sys.executable, str(folder / "fl" / "make_demo_csvs.py"), str(folder / "data")],
            check=True,
            capture_output=True,
        )
        for other in SITES:
            if other != site:
                (folder / "data" / f"{other}.csv").unlink()
        rows[site] = len((folder / "data" / f"{site}.csv").read_text().splitlines()) - 1
    assert rows["hospital-a"] != rows["hospital-b"]
    # 7-8. The aggregator serves; each site trains on its own table.
    processes = [flow.start("aggregator", "bastion aggregator start", "--host", "127.0.0.1")]
    try:
        for site in SITES:
            processes.append(
                flow.start(
                    site,
                    "bastion collaborator start hospital-a",
                    **{"/data/hospital-a.csv": f"data/{site}.csv", "hospital-a": site},
                )
            )
        codes = [process.wait(timeout=240) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = {p: (flow.folders[p] / f"{p}.out").read_text() for p in ("aggregator", *SITES)}
    assert codes == [0, 0, 0], outputs  # aggregator, hospital-a, hospital-b
    # 9. Status at the aggregator host.
    status = flow.run("aggregator", "bastion status")
    assert "finished" in status and "final evaluation metrics" in status

    assert flow.used == set(flow.lines), f"README lines never run: {set(flow.lines) - flow.used}"
    records = read_metrics(flow.folders["aggregator"] / "fl" / "logs" / "metrics.jsonl")
    for site in SITES:
        # The whole file, nothing re-split by roster size: train + validation rows = the file.
        train = next(
            r["examples"]
            for r in records
            if r.get("task") == "train" and r.get("collaborator") == site
        )
        valid = next(
            r["examples"]
            for r in records
            if r.get("task") == "validate_global" and r.get("collaborator") == site
        )
        assert train + valid == rows[site]
        assert f"dataset 'records' from data/{site}.csv" in outputs[site] or re.search(
            rf"dataset 'records' from \S*{site}\.csv", outputs[site]
        )
    summaries = round_summaries(records)
    first, final = summaries[0], summaries[-1]
    assert final["final_evaluation"]
    assert final["tasks"]["validate_global"]["accuracy"] > 0.85
    assert (
        final["tasks"]["validate_global"]["accuracy"]
        > first["tasks"]["validate_global"]["accuracy"]
    )
