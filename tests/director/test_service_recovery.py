"""``kill -9`` of the director and of a site agent during a running job: nothing is lost."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.service import Service, wait_for

import bastion
from bastion.metrics.log import read_metrics, round_summaries

SITES = ["site-1", "site-2", "site-3"]
ROUNDS = 30


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path, SITES, ["alice"])
    try:
        svc.start_director()
        for i, site in enumerate(SITES):
            svc.start_site(site, 200 + 50 * i, 250 * i, owners=["alice"])
        yield svc
    finally:
        svc.stop_all()


def _train_rounds(job: bastion.Job, collaborator: str) -> set[int]:
    return {
        e["round"]
        for e in job.rounds(follow=False)
        if e["type"] == "result" and e["collaborator"] == collaborator and e["kind"] == "train"
    }


def test_director_and_site_agent_survive_kill_9(service: Service) -> None:
    alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
    wait_for(lambda: len(alice.sites()) == 3, "three registered sites")
    # tasks arrive at once: without a delay, 30 rounds of the tiny model could all end
    # before the director and the site agent have been killed and restarted
    workspace = service.workspace("long", "alice", SITES, rounds=ROUNDS, train_delay=0.2)
    job = alice.submit(workspace, sites=SITES)
    wait_for(lambda: job.status()["rounds_done"] >= 2, "two rounds")

    # kill -9 the director mid-job; restarted on its folder, the job resumes
    old_pid = service.processes["director"].pid
    service.kill("director")
    service.start_director()
    assert service.processes["director"].pid != old_pid
    before = job.status()["rounds_done"]
    wait_for(lambda: job.status()["rounds_done"] >= before + 2, "rounds after the restart")
    assert job.state == "running"
    log = service.parties["director"] / "state" / "jobs" / job.id / "aggregator.log"
    assert "resuming from" in log.read_text()

    # kill -9 a site agent and its collaborator (the site's machine dies), then restart it
    pid_file = service.site_dir("site-3") / "jobs" / job.id / "pid"
    collaborator = int(pid_file.read_text())
    service.kill("site-3")
    os.kill(collaborator, signal.SIGKILL)
    killed_at = time.time()
    killed_round = job.status()["rounds_done"]
    service.start_site("site-3", 300, 500, owners=["alice"])
    wait_for(
        lambda: next(s for s in alice.sites() if s["name"] == "site-3")["registered"] > killed_at,
        "site-3 to register again",
    )
    wait_for(lambda: max(_train_rounds(job, "site-3")) > killed_round + 1, "site-3 to rejoin", 180)

    status = job.wait(timeout=300)
    assert status["state"] == "finished"
    metrics = service.root / "metrics"
    job.download(best=False, out=metrics)
    rounds = [r["round"] for r in round_summaries(read_metrics(metrics / "metrics.jsonl"))]
    assert rounds[:ROUNDS] == list(range(1, ROUNDS + 1))
    assert max(_train_rounds(job, "site-3")) == ROUNDS
