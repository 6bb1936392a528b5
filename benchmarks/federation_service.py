"""The federation service's figures: time from ``job submit`` to the first round starting with
three sites, and the director's memory with 100 registered sites and 10 queued jobs.

Real processes on 127.0.0.1 over mutual TLS (director, three site agents), as the tests
run them; the 100 registrations are real mTLS calls with 100 site certificates.

    PYTHONPATH=src .venv/bin/python benchmarks/federation_service.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.service import Service, wait_for  # noqa: E402

import bastion  # noqa: E402
from bastion.pki import Role, issue  # noqa: E402
from bastion.transport.service_wire import DirectorClient  # noqa: E402

SITES = ["site-1", "site-2", "site-3"]


def _rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def time_to_first_round(root: Path, repeats: int) -> list[float]:
    service = Service(root, SITES, ["alice"])
    try:
        service.start_director()
        for i, site in enumerate(SITES):
            service.start_site(site, 300, 300 * i, owners=["alice"])
        fed = bastion.Federation.connect(service.address, pki=service.pki("alice"))
        wait_for(lambda: len(fed.sites()) == 3, "three sites")
        workspaces = [
            service.workspace(f"bench-{n}", "alice", SITES, rounds=1) for n in range(repeats)
        ]
        seconds = []
        for workspace in workspaces:
            began = time.perf_counter()
            job = fed.submit(workspace, sites=SITES)
            for event in job.rounds():
                if event["type"] == "round_started":
                    seconds.append(time.perf_counter() - began)
                    break
            job.wait(timeout=300)
        return seconds
    finally:
        service.stop_all()


def director_memory(root: Path, sites: int, jobs: int) -> dict[str, object]:
    names = [f"member-{n:03d}" for n in range(sites)]
    service = Service(root, [], ["alice"])
    try:
        for name in names:
            issue(service.ca, name, Role.COLLABORATOR)
        director = service.start_director()
        idle = _rss_kib(director.pid)
        ca = (service.ca / "ca.crt").read_bytes()
        for name in names:
            tls = (
                ca,
                (service.ca / f"{name}.crt").read_bytes(),
                (service.ca / f"{name}.key").read_bytes(),
            )
            client = DirectorClient(service.address, tls)
            client.call(
                "Register",
                {"offers": {"datasets": {"records": {"examples": 1000, "features": 64}}}},
            )
            client.close()
        fed = bastion.Federation.connect(service.address, pki=service.pki("alice"))
        assert len(fed.sites()) == sites
        # queued: each waits for a site of its roster that never registers
        workspace = service.workspace("queued", "alice", ["ghost-1", "ghost-2"], rounds=1)
        for _ in range(jobs):
            fed.submit(workspace, sites=["ghost-1", "ghost-2"])
        queued = [j for j in fed.jobs() if j["state"] == "waiting"]
        assert len(queued) == jobs
        time.sleep(2.0)  # a few scheduler ticks over the full registry and queue
        loaded = _rss_kib(director.pid)
        return {
            "registered_sites": sites,
            "queued_jobs": len(queued),
            "director_rss_idle_mib": round(idle["VmRSS"] / 1024, 1),
            "director_rss_mib": round(loaded["VmRSS"] / 1024, 1),
            "director_peak_rss_mib": round(loaded["VmHWM"] / 1024, 1),
            "database_kib_with_wal": round(
                sum(
                    p.stat().st_size
                    for p in (service.parties["director"] / "state").glob("director.db*")
                )
                / 1024,
                1,
            ),
        }
    finally:
        service.stop_all()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-service-") as scratch:
        seconds = time_to_first_round(Path(scratch) / "latency", repeats=3)
        memory = director_memory(Path(scratch) / "memory", sites=100, jobs=10)
    result = {
        "benchmark": "federation_service",
        "submit_to_first_round_seconds": [round(s, 3) for s in seconds],
        "submit_to_first_round_median_seconds": round(statistics.median(seconds), 3),
        "sites_for_latency": len(SITES),
        **memory,
        "machine": "2 shared cores; site poll 0.3 s, plan poll_seconds 0.2 s",
    }
    out = HERE / "results" / "federation_service.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'figure':<42} value")
    for key, value in result.items():
        print(f"{key:<42} {value}")


if __name__ == "__main__":
    main()
