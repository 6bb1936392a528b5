"""The director's database: migrations, and state that survives reopening."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bastion.director.db import MIGRATIONS, WAITING, DirectorDB
from bastion.errors import BastionError
from bastion.site.policy import PolicyError, load_policy


def _job(job_id: str, owner: str = "alice") -> dict[str, object]:
    return {
        "id": job_id,
        "owner": owner,
        "plan_name": "p",
        "dataset": "records",
        "rounds": 3,
        "measurement": "m",
        "targeting": {"dataset": "records", "min_sites": 2},
        "open_roster": False,
        "attestation": False,
        "state": WAITING,
    }


def test_schema_is_migrated_and_state_survives_reopening(tmp_path: Path) -> None:
    db = DirectorDB(tmp_path / "director.db")
    assert db.version == len(MIGRATIONS)
    db.register_site("site-1", {"datasets": {"records": {"examples": 10}}})
    db.add_job(_job("job-1"))
    db.add_job(_job("job-2", owner="bob"))
    assert db.address_job("job-1", "site-1") and not db.address_job("job-1", "site-1")
    db.decide("job-1", "site-1", "accepted", "")
    db.add_event("job-1", {"type": "round", "round": 1})
    db.close()

    again = DirectorDB(tmp_path / "director.db")
    assert [j["id"] for j in again.jobs(owner="alice")] == ["job-1"]
    assert again.jobs(states=(WAITING,))[1]["owner"] == "bob"
    assert again.decisions("job-1") == {"site-1": ("accepted", "")}
    assert again.events("job-1") == [(1, {"type": "round", "round": 1})]
    assert again.sites()[0]["offers"]["datasets"]["records"]["examples"] == 10
    assert [j["id"] for j in again.jobs_for_site("site-1")] == ["job-1"]


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "director.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(BastionError, match="newer than this Bastion"):
        DirectorDB(path)


def test_site_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("owners: {alice: [records], bob: '*'}\nmax_concurrent_jobs: 2\n")
    policy = load_policy(path)
    offered = {"records", "images"}
    assert policy.refusal("alice", "records", False, offered) is None
    assert "may not use dataset 'images'" in str(policy.refusal("alice", "images", False, offered))
    assert policy.refusal("bob", "images", False, offered) is None
    assert "not allowed" in str(policy.refusal("eve", "records", False, offered))
    assert "offers no dataset" in str(policy.refusal("bob", "genomes", False, offered))
    path.write_text("owners: [alice]\nrequire_attestation: true\n")
    assert "requires attestation" in str(
        load_policy(path).refusal("alice", "records", False, offered)
    )
    path.write_text("owner: [alice]\n")
    with pytest.raises(PolicyError, match="unknown keys"):
        load_policy(path)
