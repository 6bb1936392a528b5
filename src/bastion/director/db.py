"""The director's state, all of it: one SQLite file with numbered migrations.

Sites, jobs, each site's decision on each job and the round events streamed from each
job's aggregator live here and nowhere else, so a director restarted (also after
``kill -9``) finds queued jobs queued and running jobs to resume. SQLite's journal makes
each write atomic; ``PRAGMA user_version`` is the schema's version.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion.errors import BastionError

DB_FILE = "director.db"

#: Each entry moves the schema one version up; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        offers TEXT NOT NULL,
        registered REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        plan_name TEXT NOT NULL,
        dataset TEXT NOT NULL,
        rounds INTEGER NOT NULL,
        measurement TEXT NOT NULL,
        targeting TEXT NOT NULL,
        open_roster INTEGER NOT NULL DEFAULT 0,
        attestation INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        submitted REAL NOT NULL,
        started REAL,
        ended REAL,
        port INTEGER,
        pid INTEGER,
        roster TEXT NOT NULL DEFAULT '[]',
        stop_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_owner ON jobs(owner);
    CREATE TABLE job_sites (
        job_id TEXT NOT NULL REFERENCES jobs(id),
        site TEXT NOT NULL,
        decision TEXT NOT NULL DEFAULT 'pending',
        reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (job_id, site)
    );
    CREATE TABLE round_events (
        job_id TEXT NOT NULL REFERENCES jobs(id),
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    """,
)

#: Job states; the last three are final.
SUBMITTED, WAITING, RUNNING, FINISHED, FAILED, STOPPED = (
    "submitted",
    "waiting",
    "running",
    "finished",
    "failed",
    "stopped",
)
FINAL = (FINISHED, FAILED, STOPPED)


class DirectorDB:
    """A thread-safe handle on ``director.db`` (one connection, serialized)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise BastionError(f"{self.path}: cannot open the director's database: {exc}") from None
        self._lock = threading.RLock()
        self.migrate()

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        version = self.version
        if version > len(MIGRATIONS):
            raise BastionError(
                f"{self.path} has schema version {version}, newer than this Bastion "
                f"({len(MIGRATIONS)}): upgrade Bastion"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction() as conn:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, args).fetchall())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ sites

    def register_site(self, name: str, offers: dict[str, Any]) -> None:
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sites(name, offers, registered, last_seen) VALUES (?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET offers=excluded.offers, "
                "registered=excluded.registered, last_seen=excluded.last_seen",
                (name, json.dumps(offers), now, now),
            )

    def touch_site(self, name: str) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute("UPDATE sites SET last_seen=? WHERE name=?", (time.time(), name))
            return cursor.rowcount == 1

    def sites(self) -> list[dict[str, Any]]:
        return [
            {
                "name": row["name"],
                "offers": json.loads(row["offers"]),
                "registered": row["registered"],
                "last_seen": row["last_seen"],
            }
            for row in self.query("SELECT * FROM sites ORDER BY name")
        ]

    # ------------------------------------------------------------------ jobs

    def add_job(self, job: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs(id, owner, plan_name, dataset, rounds, measurement, targeting, "
                "open_roster, attestation, state, submitted) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job["id"],
                    job["owner"],
                    job["plan_name"],
                    job["dataset"],
                    job["rounds"],
                    job["measurement"],
                    json.dumps(job["targeting"]),
                    int(job["open_roster"]),
                    int(job["attestation"]),
                    job["state"],
                    time.time(),
                ),
            )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, owner: str | None = None, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if owner is not None:
            sql += " AND owner=?"
            args.append(owner)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        return [_job(row) for row in self.query(sql + " ORDER BY submitted", tuple(args))]

    def update_job(self, job_id: str, **fields: Any) -> None:
        if "roster" in fields:
            fields["roster"] = json.dumps(fields["roster"])
        sets = ", ".join(f"{key}=?" for key in fields)
        with self.transaction() as conn:
            conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))

    def address_job(self, job_id: str, site: str) -> bool:
        """Address ``job_id`` to ``site`` (pending its decision); False if it already was."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO job_sites(job_id, site) VALUES (?,?)", (job_id, site)
            )
            return cursor.rowcount == 1

    def decide(self, job_id: str, site: str, decision: str, reason: str) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE job_sites SET decision=?, reason=? WHERE job_id=? AND site=?",
                (decision, reason, job_id, site),
            )
            return cursor.rowcount == 1

    def decisions(self, job_id: str) -> dict[str, tuple[str, str]]:
        rows = self.query("SELECT * FROM job_sites WHERE job_id=? ORDER BY site", (job_id,))
        return {row["site"]: (row["decision"], row["reason"]) for row in rows}

    def jobs_for_site(self, site: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT jobs.*, job_sites.decision AS decision, job_sites.reason AS decision_reason "
            "FROM jobs JOIN job_sites ON jobs.id = job_sites.job_id WHERE job_sites.site=? "
            "ORDER BY jobs.submitted",
            (site,),
        )
        jobs = []
        for row in rows:
            job = _job(row)
            job["decision"] = row["decision"]
            job["decision_reason"] = row["decision_reason"]
            jobs.append(job)
        return jobs

    # ------------------------------------------------------------------ round events

    def add_event(self, job_id: str, event: dict[str, Any]) -> None:
        with self.transaction() as conn:
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM round_events WHERE job_id=?", (job_id,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO round_events(job_id, seq, event) VALUES (?,?,?)",
                (job_id, seq, json.dumps(event)),
            )

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        rows = self.query(
            "SELECT seq, event FROM round_events WHERE job_id=? AND seq>? ORDER BY seq",
            (job_id, after),
        )
        return [(row["seq"], json.loads(row["event"])) for row in rows]


def _job(row: sqlite3.Row) -> dict[str, Any]:
    job = {key: row[key] for key in row.keys()}  # noqa: SIM118 (Row has no iteration of keys)
    job["targeting"] = json.loads(job["targeting"])
    job["roster"] = json.loads(job["roster"])
    job["open_roster"] = bool(job["open_roster"])
    job["attestation"] = bool(job["attestation"])
    job["stop_requested"] = bool(job["stop_requested"])
    return job
