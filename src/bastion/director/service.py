"""``bastion director start``: the long-lived director of a federation service.

A gRPC server over mutual TLS in the federation's PKI (the director holds an aggregator
certificate: each job's aggregator serves with it). It keeps the registry of sites and the
job queue in its database (``director.db``, the one place its state lives), addresses each
job to the sites its targeting names, starts a job once its sites accept it, and runs the
job's aggregator (the existing engine) in its own process; its gRPC methods are
``director.handlers``. Every caller is named by its certificate: model owners see and
control only their own jobs; sites only those addressed to them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bastion.director.db import (
    DB_FILE,
    FAILED,
    FINAL,
    FINISHED,
    RUNNING,
    STOPPED,
    WAITING,
    DirectorDB,
)
from bastion.director.handlers import director_handlers
from bastion.director.jobs import (
    ARCHIVE,
    WORKSPACE,
    Denied,
    JobRefused,
    NotFound,
    Targeting,
    accept_workspace,
)
from bastion.errors import BastionError, PKIError
from bastion.pki import Role, tls_files_for
from bastion.plan import load_plan
from bastion.storage.atomic import atomic_write_text
from bastion.storage.lock import ExclusiveLock
from bastion.transport.identity import server_credentials

log = logging.getLogger("bastion.director")

#: a site silent for this many heartbeats is offline (not addressed new jobs)
OFFLINE_AFTER_SECONDS = 15.0
MAX_ARCHIVE_BYTES = 4 << 30
TICK_SECONDS = 0.25


@dataclass
class _Running:
    process: subprocess.Popen[str]
    reader: threading.Thread
    terminated: bool = False
    log_file: Any = field(default=None)


class Director:
    """The director's state and scheduler; ``serve`` puts it on the network."""

    def __init__(
        self, state_dir: Path, pki_dir: Path, name: str, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state_dir = Path(state_dir)
        self.pki_dir = Path(pki_dir)
        self.name = name
        self.host = host
        self.port = port
        self.tls = tls_files_for(self.pki_dir, name)
        identity = self.tls.check()
        if identity.role is not Role.AGGREGATOR:
            raise PKIError(
                f"{self.tls.cert} belongs to {identity}; the director needs an aggregator "
                "certificate (it serves each job's aggregator with it)"
            )
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db = DirectorDB(self.state_dir / DB_FILE)
        self._running: dict[str, _Running] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server: grpc.Server | None = None

    # ------------------------------------------------------------------ life cycle

    def serve(self, port_file: Path | None = None) -> int:
        """Start the gRPC server and the scheduler; returns the port."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32),
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        server.add_generic_rpc_handlers([director_handlers(self)])
        credentials = server_credentials(*self.tls.read())
        try:
            self.port = server.add_secure_port(f"{self.host}:{self.port}", credentials)
        except RuntimeError as exc:
            raise BastionError(f"cannot listen on {self.host}:{self.port}: {exc}") from None
        server.start()
        self._server = server
        self._recover()
        threading.Thread(target=self._schedule, name="director-scheduler", daemon=True).start()
        if port_file is not None:
            atomic_write_text(Path(port_file), str(self.port))
        log.info("director %s listening on %s:%d (mutual TLS)", self.name, self.host, self.port)
        return self.port

    def run_forever(self, port_file: Path | None = None) -> None:
        with ExclusiveLock(self.state_dir, "director"):
            self.serve(port_file)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            try:
                while not self._stop.wait(0.5):
                    pass
            finally:
                self.shutdown()

    def shutdown(self) -> None:
        """Stop serving; running jobs' aggregators are stopped and resume at the next start."""
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace=1.0)
        with self._lock:
            running = list(self._running.items())
        for _, entry in running:
            entry.terminated = True
            _terminate(entry.process)
        for _, entry in running:
            entry.reader.join(timeout=10)
        self.db.close()

    def _recover(self) -> None:
        """Running jobs of an earlier director resume from their last checkpoint."""
        for job in self.db.jobs(states=(RUNNING,)):
            _kill_stale(job.get("pid"), job["id"])
            log.info("resuming job %s from its last checkpoint", job["id"])
            try:
                self._start_process(job)
            except BastionError as exc:
                self.db.update_job(job["id"], state=FAILED, reason=str(exc), ended=time.time())

    # ------------------------------------------------------------------ scheduling

    def _schedule(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception:  # never let one bad row stop every job
                log.exception("scheduler tick failed")

    def tick(self) -> None:
        now = time.time()
        online = {
            s["name"]: s for s in self.db.sites() if now - s["last_seen"] < OFFLINE_AFTER_SECONDS
        }
        for job in self.db.jobs(states=(WAITING, RUNNING)):
            if job["stop_requested"]:
                self._stop_job(job)
                continue
            if job["state"] == WAITING or job["open_roster"]:
                self._address(job, online)
            if job["state"] == WAITING:
                self._maybe_start(job)

    def _address(self, job: dict[str, Any], online: dict[str, dict[str, Any]]) -> None:
        targeting = Targeting.parse(job["targeting"])
        roster = load_plan(self.jobs_dir / job["id"] / WORKSPACE).collaborator_names()
        for name, site in online.items():
            if name not in roster:
                continue
            if targeting.sites and name not in targeting.sites:
                continue
            if targeting.dataset is not None and targeting.dataset not in site["offers"].get(
                "datasets", {}
            ):
                continue
            if self.db.address_job(job["id"], name):
                log.info("job %s addressed to site %s", job["id"], name)

    def _maybe_start(self, job: dict[str, Any]) -> None:
        targeting = Targeting.parse(job["targeting"])
        decisions = self.db.decisions(job["id"])
        accepted = sorted(s for s, (d, _) in decisions.items() if d == "accepted")
        refused = {s: r for s, (d, r) in decisions.items() if d == "rejected"}
        pending = [s for s, (d, _) in decisions.items() if d == "pending"]
        why = "; ".join(f"{s} refused: {r}" for s, r in sorted(refused.items()))
        if targeting.sites:
            if refused:
                self._end(job["id"], FAILED, why)
                return
            missing = [s for s in targeting.sites if s not in accepted]
            if missing:
                reason = f"waiting for {', '.join(missing)} to accept"
                if job["reason"] != reason:
                    self.db.update_job(job["id"], reason=reason)
                return
        elif len(accepted) < targeting.min_sites or pending:
            reason = (
                f"{len(accepted)} of at least {targeting.min_sites} sites offering "
                f"{targeting.dataset!r} accepted"
                + (f"; waiting for {', '.join(pending)}" if pending else "")
                + (f"; {why}" if why else "")
            )
            if job["reason"] != reason:
                self.db.update_job(job["id"], reason=reason)
            return
        self.db.update_job(job["id"], roster=accepted)
        job = self.db.job(job["id"]) or job
        try:
            self._start_process(job)
        except BastionError as exc:
            self._end(job["id"], FAILED, str(exc))

    def _start_process(self, job: dict[str, Any]) -> None:
        job_dir = self.jobs_dir / job["id"]
        plan = load_plan(job_dir / WORKSPACE)
        pki = job_dir / "pki"
        pki.mkdir(exist_ok=True)
        for source, target in (
            (self.tls.ca, pki / "ca.crt"),
            (self.tls.cert, pki / f"{plan.network.aggregator_name}.crt"),
            (self.tls.key, pki / f"{plan.network.aggregator_name}.key"),
        ):
            if not target.is_symlink():
                target.symlink_to(Path(source).resolve())
        port = job["port"] or _free_port(self.host)
        command = [
            sys.executable,
            "-m",
            "bastion.director.job_process",
            "--workspace",
            str(job_dir / WORKSPACE),
            "--pki-dir",
            str(pki),
            "--host",
            self.host,
            "--port",
            str(port),
            "--roster",
            ",".join(job["roster"]),
        ]
        if job["open_roster"]:
            command.append("--open-roster")
        log_file = (job_dir / "aggregator.log").open("a", encoding="utf-8")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "BASTION_JOB_ID": job["id"]},
            start_new_session=True,
        )
        self.db.update_job(
            job["id"],
            state=RUNNING,
            reason="",
            port=port,
            pid=process.pid,
            started=job["started"] or time.time(),
        )
        reader = threading.Thread(
            target=self._follow_process, args=(job["id"], process), daemon=True
        )
        with self._lock:
            self._running[job["id"]] = _Running(process, reader, log_file=log_file)
        reader.start()
        log.info("job %s running on port %d with sites %s", job["id"], port, job["roster"])

    def _follow_process(self, job_id: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.db.add_event(job_id, event)
        rc = process.wait()
        with self._lock:
            entry = self._running.pop(job_id, None)
        if entry is not None and entry.log_file is not None:
            entry.log_file.close()
        if entry is not None and entry.terminated and self._stop.is_set():
            return  # the director is shutting down: the job resumes at the next start
        job = self.db.job(job_id)
        if job is None or job["state"] in FINAL:
            return
        if job["stop_requested"]:
            self._end(job_id, STOPPED, "stopped by its owner")
        elif rc == 0:
            self._end(job_id, FINISHED, "")
        else:
            self._end(job_id, FAILED, _last_error(self.jobs_dir / job_id / "aggregator.log", rc))

    def _stop_job(self, job: dict[str, Any]) -> None:
        if job["state"] == WAITING:
            self._end(job["id"], STOPPED, "stopped by its owner")
            return
        with self._lock:
            entry = self._running.get(job["id"])
        if entry is None:
            self._end(job["id"], STOPPED, "stopped by its owner")
        elif not entry.terminated:
            entry.terminated = True
            entry.process.send_signal(signal.SIGTERM)

    def _end(self, job_id: str, state: str, reason: str) -> None:
        log.info("job %s %s%s", job_id, state, f": {reason}" if reason else "")
        self.db.update_job(job_id, state=state, reason=reason, ended=time.time())

    # ------------------------------------------------------------------ requests

    def submit(self, owner: str, header: dict[str, Any], chunks: Iterator[bytes]) -> dict[str, Any]:
        targeting = Targeting.parse(header.get("targeting"))
        job_id = f"job-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        job_dir = self.jobs_dir / job_id
        job_dir.mkdir(parents=True)
        size = 0
        with (job_dir / ARCHIVE).open("wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > MAX_ARCHIVE_BYTES:
                    out.close()
                    shutil.rmtree(job_dir, ignore_errors=True)
                    raise JobRefused(f"the workspace archive is over {MAX_ARCHIVE_BYTES} bytes")
                out.write(chunk)
        accepted = accept_workspace(job_dir, owner, self.tls.ca, targeting)
        plan = accepted.plan
        self.db.add_job(
            {
                "id": job_id,
                "owner": owner,
                "plan_name": plan.name,
                "dataset": plan.data.dataset,
                "rounds": plan.rounds,
                "measurement": accepted.measurement,
                "targeting": targeting.to_json(),
                "open_roster": plan.participation.open_roster,
                "attestation": plan.attestation is not None,
                "state": WAITING,
            }
        )
        log.info("job %s (plan %r) submitted by %s", job_id, plan.name, owner)
        return {"job": job_id}

    def visible_job(self, job_id: Any, name: str, role: Role) -> dict[str, Any]:
        """The job if the caller may see it: its owner, or a site it is addressed to."""
        job = self.db.job(str(job_id)) if isinstance(job_id, str) else None
        if job is not None:
            if role is Role.MODEL_OWNER and job["owner"] == name:
                return job
            if role is Role.COLLABORATOR and name in self.db.decisions(job["id"]):
                return job
        raise NotFound(f"no job {job_id!r} among the jobs you may see")

    def owned_job(self, job_id: Any, name: str, role: Role) -> dict[str, Any]:
        if role is not Role.MODEL_OWNER:
            raise Denied("only a job's model owner may do that")
        return self.visible_job(job_id, name, role)

    def status(self, job: dict[str, Any]) -> dict[str, Any]:
        rounds = [e for _, e in self.db.events(job["id"]) if e.get("type") == "round"]
        decisions = self.db.decisions(job["id"])
        return {
            **{k: job[k] for k in ("id", "owner", "plan_name", "dataset", "rounds", "state")},
            **{k: job[k] for k in ("reason", "submitted", "started", "ended", "roster")},
            "targeting": job["targeting"],
            "open_roster": job["open_roster"],
            "measurement": job["measurement"],
            "rounds_done": len(rounds),
            "last_round": rounds[-1] if rounds else None,
            "sites": {s: {"decision": d, "reason": r} for s, (d, r) in decisions.items()},
        }


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _kill_stale(pid: int | None, job_id: str) -> None:
    """An aggregator a killed director left behind (checked by its environment) is ended."""
    if not pid:
        return
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return
    if f"BASTION_JOB_ID={job_id}".encode() not in environ.split(b"\0"):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        try:
            status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return
        if status == "Z":
            return
        time.sleep(0.05)


def _last_error(path: Path, rc: int) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1][len("error: ") :]
    return f"the aggregator exited with status {rc}" + (f": {lines[-1]}" if lines else "")
