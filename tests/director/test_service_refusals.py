"""Refusals over real connections: a site's policy, a broken signature, owner isolation."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import run_bastion
from support.service import Service, wait_for

import bastion
from bastion.site.agent import verify_job_archive
from bastion.transport.service_wire import DirectorClient, DirectorError
from bastion.workspace.archive import export_workspace


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path, ["site-1", "site-2"], ["alice", "bob"])
    try:
        svc.start_director()
        svc.start_site("site-1", 200, 0, owners={"alice": ["records"]})
        svc.start_site("site-2", 250, 200, owners=["alice", "bob"])
        yield svc
    finally:
        svc.stop_all()


def _tampered(archive: Path, out: Path) -> Path:
    """The archive with one byte of task.py changed, everything else (signature) intact."""
    with tarfile.open(archive) as source, tarfile.open(out, "w:gz") as target:
        for member in source:
            data = source.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            if member.name == "task.py":
                data = data.replace(b"import", b"import ", 1)
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return out


def test_policy_signature_and_owner_isolation(service: Service) -> None:
    alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
    bob = bastion.Federation.connect(service.address, pki=service.pki("bob"))
    wait_for(lambda: len(bob.sites()) == 2, "two registered sites")

    # site-1's policy does not allow bob: it never runs his job, and bob sees why
    ws_bob = service.workspace("bob-job", "bob", ["site-1", "site-2"], rounds=1)
    refused = bob.submit(ws_bob, sites=["site-1"])
    with pytest.raises(bastion.BastionError, match="site-1 refused: model owner 'bob' is not"):
        refused.wait(timeout=120)
    status = refused.status()
    assert status["state"] == "failed"
    assert "not allowed by this site's policy" in status["sites"]["site-1"]["reason"]
    at_site = service.site_dir("site-1") / "jobs" / refused.id
    assert sorted(p.name for p in at_site.iterdir()) == ["decision.json"]  # nothing imported
    assert "collaborator started" not in service.output("site-1")

    # a workspace whose signature no longer matches is refused by the director...
    ws_alice = service.workspace("alice-job", "alice", ["site-1", "site-2"], rounds=2)
    archive = export_workspace(ws_alice, service.root / "alice.tar.gz").archive
    broken = _tampered(archive, service.root / "broken.tar.gz")
    with pytest.raises(bastion.BastionError, match="job refused: .*task.py"):
        alice.submit(broken, sites=["site-1"])
    assert not [j for j in alice.jobs() if j["plan_name"] == "alice-job"]
    # ...and by every site, before anything is imported (what a site runs on a job it accepts)
    for site in ("site-1", "site-2"):
        target = service.site_dir(site) / "probe"
        with pytest.raises(bastion.BastionError, match="task.py"):
            verify_job_archive(
                broken,
                target,
                service.pki(site) / "ca.crt",
                {"owner": "alice", "measurement": "x", "dataset": "records"},
            )

    # alice's good job runs on both sites (site-1 allows her on 'records')
    job = alice.submit(archive, sites=["site-1", "site-2"])
    job.wait(timeout=300)

    # bob can neither see, stop nor download alice's job, over real connections
    assert job.id not in {j["id"] for j in bob.jobs()}
    with pytest.raises(DirectorError, match="no job"):
        bob.job(job.id)
    raw = DirectorClient(
        service.address,
        tuple((service.pki("bob") / f).read_bytes() for f in ("ca.crt", "bob.crt", "bob.key")),  # type: ignore[arg-type]
    )
    with pytest.raises(DirectorError, match="no job"):
        raw.call("StopJob", {"job": job.id})
    with pytest.raises(DirectorError, match="no job"):
        raw.download("Download", {"job": job.id, "what": "best"}, service.root / "stolen")
    with pytest.raises(DirectorError, match="no job"):
        list(raw.follow("Rounds", {"job": job.id}))
    assert not (service.root / "stolen").exists()
    # a site cannot submit, and cannot see a job not addressed to it
    site_tls = tuple(
        (service.pki("site-1") / f).read_bytes() for f in ("ca.crt", "site-1.crt", "site-1.key")
    )
    as_site = DirectorClient(service.address, site_tls)  # type: ignore[arg-type]
    with pytest.raises(DirectorError, match="may not submit"):
        as_site.upload("Submit", {"targeting": {"sites": ["site-1"]}}, archive)
    assert alice.job(job.id).status()["state"] == "finished"


def test_a_site_without_auto_approval_waits_for_its_operator(tmp_path: Path) -> None:
    service = Service(tmp_path, ["site-1"], ["alice"])
    try:
        service.start_director()
        service.start_site("site-1", 200, 0, owners=["alice"], auto_approve=False)
        alice = bastion.Federation.connect(service.address, pki=service.pki("alice"))
        wait_for(lambda: alice.sites(), "a registered site")
        state = str(service.site_dir("site-1"))
        for verdict in ("approve", "reject"):
            workspace = service.workspace(f"by-hand-{verdict}", "alice", ["site-1"], rounds=1)
            job = alice.submit(workspace, sites=["site-1"])
            wait_for(
                lambda job=job: job.id in run_bastion("site", "jobs", "--dir", state).stdout,
                "the job to wait for the operator",
            )
            assert not (service.site_dir("site-1") / "jobs" / job.id / "workspace").exists()
            assert job.state == "waiting"
            result = run_bastion("site", verdict, job.id, "--dir", state)
            assert result.returncode == 0, result.stderr
            if verdict == "approve":
                assert job.wait(timeout=180)["state"] == "finished"
            else:
                with pytest.raises(bastion.BastionError, match="rejected by the site's operator"):
                    job.wait(timeout=180)
        unknown = run_bastion("site", "approve", "job-nope", "--dir", state)
        assert unknown.returncode == 2 and "no job 'job-nope' waits" in unknown.stderr
    finally:
        service.stop_all()
