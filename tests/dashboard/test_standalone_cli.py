"""``bastion aggregator start --dashboard``: the page of one federation, from the CLI, while
its aggregator and two collaborators run as processes over mutual TLS."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from support.service import free_port, wait_for
from support.workspaces import make_workspace

from bastion.sim.processes import LocalFederation

ROUNDS = 4


class DashboardFederation(LocalFederation):
    dashboard_port = 0

    def _command(self, *args: str) -> list[str]:
        command = super()._command(*args)
        if args[:2] == ("aggregator", "start"):
            # the page outlives the last round for a few seconds: time to read "finished"
            command += [
                "--dashboard",
                f"127.0.0.1:{self.dashboard_port}",
                "--dashboard-linger",
                "8",
            ]
        return command


def test_aggregator_start_serves_the_dashboard(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2, rounds=ROUNDS)
    seen: list[int] = []
    with DashboardFederation(workspace) as federation:
        federation.dashboard_port = port = free_port()
        federation.start()
        base = f"http://127.0.0.1:{port}"

        def overview() -> dict | None:
            try:
                answer = requests.get(base + "/api/overview", timeout=2)
            except requests.RequestException:
                return None
            data = answer.json()
            seen.append(data["jobs"][0]["progress"]["rounds_done"])
            return data if data["jobs"][0]["state"] == "finished" else None

        data = wait_for(overview, "the federation finished, on its dashboard", 180)
        codes = federation.wait(timeout=120)
    assert set(codes.values()) == {0}, codes
    (job,) = data["jobs"]
    assert job["progress"]["rounds_done"] == ROUNDS
    assert len(job["progress"]["series"]["validate_global/accuracy"]) == ROUNDS
    assert job["progress"]["final_metrics"]["validate_global"]["accuracy"] > 0.5
    assert {s["name"] for s in data["sites"]} == {"site-1", "site-2"}
    assert any("round" in line for line in job["log"]), json.dumps(job["log"])
    assert seen == sorted(seen)
