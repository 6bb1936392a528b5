"""Service faults: kill -9 / SIGSTOP of a site agent (issue 13's director and sites) mid-job.

A site agent is armed at a named point (``site.decided``: the decision is on disk, not yet
sent; ``site.spawned``: the job's collaborator is running, its pid not yet recorded) and
killed there, then started again on its folder; or it is stopped (SIGSTOP) longer than the
director's offline threshold while its collaborator trains, then continued. Each time the
job must finish with every planned round, the site unblamed, and never two collaborators
of one site in one job.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import full_only
from faults.results import record
from support.service import Service, wait_for

import bastion
from bastion.director.service import OFFLINE_AFTER_SECONDS
from bastion.faults import ENV, LOG_ENV
from bastion.metrics.log import read_metrics, round_summaries

SITES = ["site-1", "site-2"]
ROUNDS = 4


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path, SITES, ["alice"])
    try:
        svc.start_director()
        yield svc
    finally:
        svc.stop_all()


def _start_site(service: Service, name: str, fault: str | None = None) -> None:
    index = SITES.index(name)
    saved = service.env
    service.env = {**saved, LOG_ENV: str(service.root / "faults.log")}
    if fault:
        service.env[ENV] = fault
    try:
        service.start_site(name, 200, 250 * index, owners=["alice"])
    finally:
        service.env = saved


def _fired(service: Service, point: str) -> bool:
    log = service.root / "faults.log"
    return log.is_file() and point in log.read_text()


def _collaborators_of(service: Service, site: str, job_id: str) -> list[int]:
    """Live collaborator processes this site runs for the job (from their environment)."""
    marker = f"BASTION_SITE_JOB={job_id}".encode()
    folder = str(service.site_dir(site)).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and folder in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _last_seen(federation: bastion.Federation, site: str) -> float:
    return float(next(s for s in federation.sites() if s["name"] == site)["last_seen"])


def _finished_unblamed(service: Service, job: bastion.Job) -> int:
    """Finished with every planned round and nobody blamed; the rounds started twice."""
    status = job.wait(timeout=300)
    assert status["state"] == "finished", (status, service.output("site-1")[-3000:])
    out = service.root / "metrics"
    job.download(best=False, out=out)
    records = read_metrics(out / "metrics.jsonl")
    rounds = [r["round"] for r in round_summaries(records)]
    assert rounds[:ROUNDS] == list(range(1, ROUNDS + 1)), rounds
    for entry in records:
        if entry.get("event") == "round":
            assert not entry["rejected"] and not entry["failed"], entry
    starts = [r["round"] for r in records if r.get("event") == "round_start"]
    return len(starts) - len(set(starts))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["site.spawned", *full_only("site.decided")])
def test_site_agent_killed_at_point_restarts_and_the_job_finishes(
    service: Service, point: str
) -> None:
    alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
    _start_site(service, "site-1", fault=f"{point}:kill")
    _start_site(service, "site-2")
    wait_for(lambda: len(alice.sites()) == 2, "two registered sites")
    job = alice.submit(service.workspace("job", "alice", SITES, rounds=ROUNDS), sites=SITES)
    wait_for(lambda: _fired(service, point), point, 120)
    assert service.processes["site-1"].wait(timeout=30) == -signal.SIGKILL
    killed = time.monotonic()
    _start_site(service, "site-1")
    wait_for(lambda: job.status()["rounds_done"] >= 1, "a round after the restart", 180)
    assert len(_collaborators_of(service, "site-1", job.id)) <= 1
    lost = _finished_unblamed(service, job)
    record(
        "site agent kill -9 + restart (director service)",
        f"{point}:kill",
        "job finished, every round, site unblamed, one collaborator per site",
        lost,
        time.monotonic() - killed,
    )


@pytest.mark.slow
def test_site_agent_stopped_past_offline_then_continued(service: Service) -> None:
    alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
    for name in SITES:
        _start_site(service, name)
    wait_for(lambda: len(alice.sites()) == 2, "two registered sites")
    job = alice.submit(service.workspace("job", "alice", SITES, rounds=ROUNDS), sites=SITES)
    wait_for(lambda: job.status()["rounds_done"] >= 1, "round 1", 180)
    agent = service.processes["site-1"]
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: time.time() - _last_seen(alice, "site-1") > OFFLINE_AFTER_SECONDS + 1,
            "site-1 offline",
            OFFLINE_AFTER_SECONDS * 4,
        )
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    continued = time.monotonic()
    lost = _finished_unblamed(service, job)
    assert agent.poll() is None
    record(
        "site agent SIGSTOP + SIGCONT (director service)",
        f"stopped > {OFFLINE_AFTER_SECONDS:.0f} s (director marks it offline)",
        "job finished, every round, site unblamed",
        lost,
        time.monotonic() - continued,
    )
