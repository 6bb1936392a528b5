"""``bastion site start``: a data site's agent (the envoy), which only dials out.

It registers with its certificate and publishes what it offers (dataset names, example
counts and feature counts from its ``site.yaml``, framework versions, attestation
devices) without revealing data; it heart-beats, and for each job addressed to it decides
under its policy. A job it accepts is downloaded, unpacked by the safe importer and
verified against the signature of the model owner who submitted it, before anything of it
is imported; then its collaborator runs as a separate process in the job's own directory.
A refused job is never downloaded. Everything the agent decided is in ``STATE/jobs/JOB``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion import faults
from bastion.data.site import SiteData, load_site_data
from bastion.errors import BastionError, PKIError
from bastion.pki import Role, load_certificate, tls_files_for
from bastion.plan import load_plan
from bastion.site.policy import SitePolicy
from bastion.storage.atomic import atomic_write_text
from bastion.storage.lock import ExclusiveLock
from bastion.transport import service_wire as wire
from bastion.workspace.archive import import_workspace
from bastion.workspace.verify import verify_workspace

log = logging.getLogger("bastion.site")

FINAL = ("finished", "failed", "stopped")
APPROVALS = "approvals"
MAX_RESTARTS = 20
#: set in each collaborator the agent starts: which agent's folder it belongs to
SITE_DIR_ENV = "BASTION_SITE_DIR"


@dataclass
class _Local:
    process: subprocess.Popen[bytes]
    started: float
    restarts: int = 0


def offers(site_data: SiteData) -> dict[str, Any]:
    """What this site publishes: dataset names and shapes, never a row of data."""
    datasets = {}
    for name, entry in site_data.datasets.items():
        described: dict[str, Any] = {"format": entry.path.suffix.lstrip(".") or "folder"}
        if entry.path.is_file() and entry.path.suffix.lower() == ".csv":
            with entry.path.open("r", encoding="utf-8", errors="replace") as handle:
                header = handle.readline()
                rows = sum(1 for line in handle if line.strip())
            described["examples"] = rows
            described["features"] = max(len(header.split(",")) - 1, 0)
            described["dtype"] = "numeric table"
        datasets[name] = described
    frameworks = {}
    for package in ("numpy", "torch", "scikit-learn", "jax", "keras", "bastion-fl"):
        try:
            frameworks[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    attestation = [
        kind
        for kind, device in (
            ("sgx", "/dev/sgx_enclave"),
            ("tdx", "/dev/tdx_guest"),
            ("sev-snp", "/dev/sev-guest"),
        )
        if os.path.exists(device)
    ]
    return {
        "datasets": datasets,
        "frameworks": frameworks,
        "python": platform.python_version(),
        "attestation": attestation,
    }


class SiteAgent:
    def __init__(
        self,
        director: str,
        pki_dir: Path,
        name: str,
        state_dir: Path,
        policy: SitePolicy,
        data: Path | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.director = director
        self.director_host = director.rsplit(":", 1)[0]
        self.pki_dir = Path(pki_dir).resolve()
        self.name = name
        self.state_dir = Path(state_dir).resolve()
        self.policy = policy
        self.data = Path(data).resolve() if data is not None else None
        self.site_data = load_site_data(self.data) if self.data is not None else SiteData()
        self.poll_seconds = poll_seconds
        files = tls_files_for(self.pki_dir, name)
        identity = files.check()
        if identity.role is not Role.COLLABORATOR or identity.name != name:
            raise PKIError(f"{files.cert} belongs to {identity}, not to site {name!r}")
        self.tls = files.read()
        # published with the offers, for the operator's view (the dashboard)
        expiry = load_certificate(files.cert).not_valid_after_utc
        self.certificate = {"not_after": expiry.strftime("%Y-%m-%d %H:%M UTC")}
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / APPROVALS).mkdir(exist_ok=True)
        self._local: dict[str, _Local] = {}
        self._stop = threading.Event()
        self._registered = False
        self._client = wire.DirectorClient(director, self.tls, timeout=15.0)

    # ------------------------------------------------------------------ life cycle

    def run_forever(self) -> None:
        with ExclusiveLock(self.state_dir, "site agent"):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            self._adopt_or_end_leftovers()
            warned = False
            try:
                while not self._stop.is_set():
                    try:
                        self.step()
                        warned = False
                    except wire.DirectorUnavailable as exc:
                        self._registered = False
                        if not warned:
                            log.warning("%s; retrying", exc)
                            warned = True
                    self._stop.wait(self.poll_seconds)
            finally:
                self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        """Leaving: the jobs' collaborators stop; they rejoin when the agent starts again."""
        for local in self._local.values():
            _terminate(local.process)
        self._local.clear()
        self._client.close()

    def _adopt_or_end_leftovers(self) -> None:
        """Collaborators a killed agent left behind are ended; accepted jobs restart them.

        Found by their environment, not by the pid files alone: an agent killed between
        starting a collaborator and recording its pid left one no file names, and a second
        collaborator of this site then joined the same job.
        """
        for pid in _leftover_collaborators(self.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ one poll

    def step(self) -> None:
        if not self._registered:
            published = {**offers(self.site_data), "certificate": self.certificate}
            self._client.call("Register", {"offers": published})
            self._registered = True
            log.info("registered with the director at %s as %s", self.director, self.name)
        try:
            answer = self._client.call("Heartbeat")
        except wire.DirectorError as exc:
            if "register first" in str(exc):
                self._registered = False
                return
            raise
        seen = set()
        for job in answer.get("jobs", []):
            seen.add(job["id"])
            self._handle(job)
        for job_id in list(self._local):
            if job_id not in seen:
                self._end_local(job_id, "the director no longer lists it")

    def _record(self, job_id: str) -> dict[str, Any]:
        path = self.jobs_dir / job_id / "decision.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def _write_record(self, job_id: str, record: dict[str, Any]) -> None:
        atomic_write_text(self.jobs_dir / job_id / "decision.json", json.dumps(record, indent=1))

    def _handle(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        record = self._record(job_id)
        if job["state"] in FINAL:
            if job_id in self._local:
                self._end_local(job_id, f"the job is {job['state']}")
            return
        if job["decision"] == "pending" and record.get("decision") is None:
            self._decide(job)
            return
        if job["decision"] == "pending" and record.get("decision") in ("accepted", "rejected"):
            self._send_decision(job_id, record["decision"], record.get("reason", ""))
            return
        if job["decision"] == "accepted" and job["state"] == "running":
            self._keep_running(job)

    def _decide(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        refusal = self.policy.refusal(
            job["owner"], job["dataset"], job["attestation"], set(self.site_data.datasets)
        )
        if refusal is None and self._active() >= self.policy.max_concurrent_jobs:
            refusal = f"this site runs at most {self.policy.max_concurrent_jobs} jobs at once"
        if refusal is None and not self.policy.auto_approve:
            approval = self.state_dir / APPROVALS / job_id
            if not approval.is_file():
                self._note_pending(job)
                return
            verdict = approval.read_text().strip()
            if verdict != "approve":
                refusal = "rejected by the site's operator"
        if refusal is None:
            refusal = self._prepare(job)
        decision = "rejected" if refusal else "accepted"
        self._write_record(job_id, {"decision": decision, "reason": refusal or "", "job": job})
        faults.point("site.decided", job_id)
        log.info(
            "job %s of %s %s%s", job_id, job["owner"], decision, f": {refusal}" if refusal else ""
        )
        self._send_decision(job_id, decision, refusal or "")

    def _send_decision(self, job_id: str, decision: str, reason: str) -> None:
        try:
            self._client.call("Decide", {"job": job_id, "decision": decision, "reason": reason})
        except wire.DirectorUnavailable:
            raise
        except wire.DirectorError as exc:
            log.warning("job %s: the director did not take our decision: %s", job_id, exc)

    def _note_pending(self, job: dict[str, Any]) -> None:
        path = self.jobs_dir / job["id"] / "pending.json"
        if not path.is_file():
            atomic_write_text(path, json.dumps(job, indent=1))
            log.info(
                "job %s of %s waits for `bastion site approve %s`",
                job["id"],
                job["owner"],
                job["id"],
            )

    def _prepare(self, job: dict[str, Any]) -> str | None:
        """Download, unpack and verify the job's workspace; the reason to refuse, or None."""
        job_dir = self.jobs_dir / job["id"]
        archive = job_dir / "workspace.tar.gz"
        workspace = job_dir / "workspace"
        try:
            if workspace.exists():
                shutil.rmtree(workspace)
            self._client.download("FetchWorkspace", {"job": job["id"]}, archive)
            verify_job_archive(archive, workspace, self.pki_dir / "ca.crt", job)
        except wire.DirectorUnavailable:
            raise
        except BastionError as exc:
            shutil.rmtree(workspace, ignore_errors=True)
            return f"workspace refused: {exc}"
        return None

    def _active(self) -> int:
        return sum(1 for local in self._local.values() if local.process.poll() is None)

    def _keep_running(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        local = self._local.get(job_id)
        if local is not None:
            rc = local.process.poll()
            if rc is None:
                if time.time() - local.started > self.policy.max_wall_seconds:
                    self._end_local(job_id, "over this site's maximum wall time")
                    self._write_record(
                        job_id, {**self._record(job_id), "ended": "over the maximum wall time"}
                    )
                return
            if rc == 0 or local.restarts >= MAX_RESTARTS:
                return  # done (or given up on); the job's end comes from the director
            log.warning("job %s: the collaborator exited with %d; starting it again", job_id, rc)
        if self._record(job_id).get("ended"):
            return
        self._start_local(job, restarts=local.restarts + 1 if local else 0)

    def _start_local(self, job: dict[str, Any], restarts: int = 0) -> None:
        job_dir = self.jobs_dir / job["id"]
        command = [
            sys.executable,
            "-m",
            "bastion.site.job_process",
            "--workspace",
            str(job_dir / "workspace"),
            "--name",
            self.name,
            "--aggregator",
            f"{self.director_host}:{job['port']}",
            "--pki-dir",
            str(self.pki_dir),
            "--log-file",  # the job's own rotated log; stray output and crashes: .out
            str(job_dir / "collaborator.log"),
        ]
        if self.data is not None:
            command += ["--data", str(self.data)]
        with (job_dir / "collaborator.out").open("ab") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=job_dir,
                env={
                    **os.environ,
                    "BASTION_SITE_JOB": job["id"],
                    SITE_DIR_ENV: str(self.state_dir),
                },
                start_new_session=True,
            )
        faults.point("site.spawned", job["id"])
        atomic_write_text(job_dir / "pid", str(process.pid))
        self._local[job["id"]] = _Local(process, time.time(), restarts)
        log.info("job %s: collaborator started (pid %d)", job["id"], process.pid)

    def _end_local(self, job_id: str, why: str) -> None:
        local = self._local.pop(job_id, None)
        if local is not None and local.process.poll() is None:
            log.info("job %s: stopping its collaborator (%s)", job_id, why)
            _terminate(local.process)


def verify_job_archive(archive: Path, workspace: Path, ca_cert: Path, job: dict[str, Any]) -> None:
    """Unpack safely and verify the signature, plan, owner and measurement; imports nothing."""
    import_workspace(archive, workspace)
    plan = load_plan(workspace)
    verified = verify_workspace(workspace, plan, ca_cert)
    if verified.signer is None or verified.signer.name != job["owner"]:
        raise BastionError(
            f"signed by {verified.signer}, but the director says the job is {job['owner']!r}'s"
        )
    if verified.measurement != job["measurement"]:
        raise BastionError("its measurement is not the one the director announced")
    if plan.data.dataset != job["dataset"]:
        raise BastionError(f"its plan trains on {plan.data.dataset!r}, not {job['dataset']!r}")


def _leftover_collaborators(state_dir: Path) -> list[int]:
    """Live processes started by an agent on ``state_dir`` for one of its jobs (Linux /proc)."""
    marker = f"{SITE_DIR_ENV}={state_dir}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        if entry.name == str(os.getpid()):
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and any(item.startswith(b"BASTION_SITE_JOB=") for item in environ):
            found.append(int(entry.name))
    return found


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def decide_by_hand(state_dir: Path, job_id: str, approve: bool) -> Path:
    """``bastion site approve|reject JOB``: the operator's decision, read by the agent."""
    job_dir = Path(state_dir) / "jobs" / job_id
    if not (job_dir / "pending.json").is_file():
        raise BastionError(f"no job {job_id!r} waits for this site's approval in {state_dir}")
    path = Path(state_dir) / APPROVALS / job_id
    atomic_write_text(path, "approve" if approve else "reject")
    return path


def pending_jobs(state_dir: Path) -> list[dict[str, Any]]:
    """Jobs waiting for this site's operator."""
    found = []
    for path in sorted((Path(state_dir) / "jobs").glob("*/pending.json")):
        if not (path.parent / "decision.json").is_file():
            found.append(dict(json.loads(path.read_text())))
    return found
