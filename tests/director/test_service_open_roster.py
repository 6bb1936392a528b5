"""An open-roster job: a fourth site that registers while it runs joins from the next round."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.service import Service, wait_for

import bastion

SITES = ["site-1", "site-2", "site-3", "site-4"]


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path, SITES, ["alice"])
    try:
        svc.start_director()
        for i, site in enumerate(SITES[:3]):
            svc.start_site(site, 200 + 40 * i, 200 * i, owners=["alice"])
        yield svc
    finally:
        svc.stop_all()


def test_a_site_registering_during_an_open_roster_job_joins_at_the_next_round(
    service: Service,
) -> None:
    alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
    wait_for(lambda: len(alice.sites()) == 3, "three registered sites")
    workspace = service.workspace(
        "open",
        "alice",
        SITES,
        rounds=25,
        plan_changes={"participation": {"open_roster": True}},
        # with tasks delivered at once, 25 rounds would end before a fourth site agent started
        train_delay=0.4,
    )
    job = alice.submit(workspace, dataset="records", min_sites=3)
    wait_for(lambda: job.status()["rounds_done"] >= 2, "two rounds with three sites")
    assert sorted(job.status()["roster"]) == SITES[:3]
    joined_after = job.status()["rounds_done"]
    service.start_site("site-4", 260, 700, owners=["alice"])
    job.wait(timeout=300)

    started = {
        e["round"]: set(e["collaborators"])
        for e in job.rounds(follow=False)
        if e["type"] == "round_started" and not e["final_evaluation"]
    }
    trained = {
        e["round"]
        for e in job.rounds(follow=False)
        if e["type"] == "result" and e["collaborator"] == "site-4" and e["kind"] == "train"
    }
    assert all("site-4" not in started[r] for r in range(1, joined_after + 1))
    first = min(trained)
    assert first > joined_after
    assert trained == set(range(first, 26))  # every round from the one after it joined
    assert all("site-4" in started[r] for r in range(first, 26))
    assert job.status()["sites"]["site-4"]["decision"] == "accepted"


def test_a_closed_roster_job_does_not_take_a_late_site(service: Service) -> None:
    alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
    wait_for(lambda: len(alice.sites()) == 3, "three registered sites")
    workspace = service.workspace("closed", "alice", SITES, rounds=12)
    job = alice.submit(workspace, dataset="records", min_sites=3)
    wait_for(lambda: job.status()["rounds_done"] >= 1, "a round")
    service.start_site("site-4", 260, 700, owners=["alice"])
    wait_for(lambda: len(alice.sites()) == 4, "site-4 registered")
    job.wait(timeout=300)
    assert "site-4" not in job.status()["sites"]
    assert not any(e.get("collaborator") == "site-4" for e in job.rounds(follow=False))
