"""The director's gRPC methods: who may call what, and each request as a ``Director`` call.

The wire (method names, JSON messages, raw chunks) is ``transport.service_wire``; the
director's state and scheduling are ``director.service``. Here each method names its caller
from the verified certificate, checks the caller's role, and maps a refusal to one gRPC
status with a one-line reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from bastion.director.db import FINAL, RUNNING, WAITING
from bastion.director.jobs import ARCHIVE, WORKSPACE, Denied, NotFound
from bastion.errors import BastionError, PKIError
from bastion.metrics.log import METRICS_FILE
from bastion.pki import Role
from bastion.plan import load_plan
from bastion.storage.checkpoints import BEST, LAST
from bastion.transport import service_wire as wire

if TYPE_CHECKING:
    from bastion.director.service import Director

log = logging.getLogger("bastion.director")

_STATUS = {NotFound: grpc.StatusCode.NOT_FOUND, Denied: grpc.StatusCode.PERMISSION_DENIED}


def director_handlers(director: Director) -> grpc.GenericRpcHandler:
    """The director's service, for ``grpc.Server.add_generic_rpc_handlers``."""
    return _Requests(director).generic_handler()


class _Requests:
    """Each of the service's methods, answered from ``director``'s state."""

    def __init__(self, director: Director) -> None:
        self._director = director
        self._db = director.db

    def generic_handler(self) -> grpc.GenericRpcHandler:
        def identity(raw: bytes) -> bytes:
            return raw

        def unary(fn: Callable[..., dict[str, Any]]) -> grpc.RpcMethodHandler:
            def handle(raw: bytes, context: grpc.ServicerContext) -> bytes:
                with _aborts(context):
                    name, role = wire.caller(context)
                    return wire.encode(fn(wire.decode(raw), name, role))
                return b""

            return grpc.unary_unary_rpc_method_handler(handle, identity, identity)

        def upload(raw_iter: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            with _aborts(context):
                name, role = wire.caller(context)
                if role is not Role.MODEL_OWNER:
                    raise Denied(f"{name} ({role.value}) may not submit jobs: model owners do")
                header = wire.decode(next(raw_iter, b"{}"))
                return wire.encode(self._director.submit(name, header, raw_iter))
            return b""

        def streaming(fn: Callable[..., Iterator[bytes]]) -> grpc.RpcMethodHandler:
            def handle(raw: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                with _aborts(context):
                    name, role = wire.caller(context)
                    yield from fn(wire.decode(raw), name, role, context)

            return grpc.unary_stream_rpc_method_handler(handle, identity, identity)

        methods = {
            "Register": unary(self._register),
            "Heartbeat": unary(self._heartbeat),
            "Decide": unary(self._decide),
            "Sites": unary(lambda _m, _n, _r: {"sites": self._db.sites()}),
            "ListJobs": unary(self._list_jobs),
            "JobStatus": unary(
                lambda m, n, r: self._director.status(
                    self._director.visible_job(m.get("job"), n, r)
                )
            ),
            "StopJob": unary(self._stop_request),
            "Submit": grpc.stream_unary_rpc_method_handler(upload, identity, identity),
            "FetchWorkspace": streaming(self._fetch_workspace),
            "Download": streaming(self._download),
            "Rounds": streaming(self._rounds),
            "Logs": streaming(self._logs),
        }
        return grpc.method_handlers_generic_handler(wire.SERVICE, methods)

    def _require_site(self, name: str, role: Role) -> None:
        if role is not Role.COLLABORATOR:
            raise Denied(f"{name} ({role.value}) is not a site")

    def _register(self, message: dict[str, Any], name: str, role: Role) -> dict[str, Any]:
        self._require_site(name, role)
        offers = message.get("offers")
        if not isinstance(offers, dict):
            raise BastionError("register with what the site offers")
        self._db.register_site(name, offers)
        log.info("site %s registered: datasets %s", name, sorted(offers.get("datasets", {})))
        return {"site": name}

    def _heartbeat(self, message: dict[str, Any], name: str, role: Role) -> dict[str, Any]:
        self._require_site(name, role)
        if not self._db.touch_site(name):
            raise NotFound(f"site {name} is not registered: register first")
        jobs = []
        for job in self._db.jobs_for_site(name):
            if job["state"] in FINAL and job["ended"] and time.time() - job["ended"] > 3600:
                continue
            jobs.append(
                {
                    k: job[k]
                    for k in (
                        "id",
                        "owner",
                        "plan_name",
                        "dataset",
                        "measurement",
                        "attestation",
                        "state",
                        "port",
                        "decision",
                        "roster",
                        "open_roster",
                    )
                }
            )
        return {"jobs": jobs}

    def _decide(self, message: dict[str, Any], name: str, role: Role) -> dict[str, Any]:
        self._require_site(name, role)
        job = self._director.visible_job(message.get("job"), name, role)
        decision = message.get("decision")
        if decision not in ("accepted", "rejected"):
            raise BastionError("a decision is 'accepted' or 'rejected'")
        if job["state"] != WAITING and not (job["state"] == RUNNING and job["open_roster"]):
            raise BastionError(f"job {job['id']} is {job['state']}: too late to decide")
        self._db.decide(job["id"], name, decision, str(message.get("reason", ""))[:500])
        log.info("site %s %s job %s %s", name, decision, job["id"], message.get("reason", ""))
        return {"job": job["id"], "decision": decision}

    def _list_jobs(self, message: dict[str, Any], name: str, role: Role) -> dict[str, Any]:
        if role is Role.MODEL_OWNER:
            jobs = self._db.jobs(owner=name)
        elif role is Role.COLLABORATOR:
            jobs = self._db.jobs_for_site(name)
        else:
            raise Denied(f"{name} ({role.value}) has no jobs")
        return {"jobs": [self._director.status(job) for job in jobs]}

    def _stop_request(self, message: dict[str, Any], name: str, role: Role) -> dict[str, Any]:
        job = self._director.owned_job(message.get("job"), name, role)
        if job["state"] not in FINAL:
            self._db.update_job(job["id"], stop_requested=1)
        return {"job": job["id"], "state": job["state"]}

    def _fetch_workspace(
        self, message: dict[str, Any], name: str, role: Role, _ctx: grpc.ServicerContext
    ) -> Iterator[bytes]:
        self._require_site(name, role)
        job = self._director.visible_job(message.get("job"), name, role)
        yield from _chunks(self._director.jobs_dir / job["id"] / ARCHIVE)

    def _download(
        self, message: dict[str, Any], name: str, role: Role, _ctx: grpc.ServicerContext
    ) -> Iterator[bytes]:
        job = self._director.owned_job(message.get("job"), name, role)
        workspace = self._director.jobs_dir / job["id"] / WORKSPACE
        plan = load_plan(workspace)
        what = message.get("what")
        files = {
            "best": workspace / plan.output.checkpoints / BEST,
            "last": workspace / plan.output.checkpoints / LAST,
            "metrics": workspace / plan.output.logs / METRICS_FILE,
        }
        if what not in files:
            raise BastionError("download 'best', 'last' or 'metrics'")
        path = files[what]
        if what == "best" and not path.is_file():
            path = files["last"]
        if not path.is_file():
            raise NotFound(f"job {job['id']} has no {what} checkpoint yet ({job['state']})")
        yield from _chunks(path)

    def _rounds(
        self, message: dict[str, Any], name: str, role: Role, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        job = self._director.visible_job(message.get("job"), name, role)
        after = int(message.get("after", 0))
        follow = bool(message.get("follow", True))
        while context.is_active():
            for seq, event in self._db.events(job["id"], after):
                after = seq
                yield wire.encode({"seq": seq, **event})
            current = self._db.job(job["id"])
            ended = not follow or current is None or current["state"] in FINAL
            if ended and not self._db.events(job["id"], after):
                yield wire.encode(
                    {"type": "job_ended", "state": current["state"] if current else "?"}
                )
                return
            time.sleep(0.2)

    def _logs(
        self, message: dict[str, Any], name: str, role: Role, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        job = self._director.owned_job(message.get("job"), name, role)
        path = self._director.jobs_dir / job["id"] / "aggregator.log"
        follow = bool(message.get("follow", False))
        position = 0
        while context.is_active():
            if path.is_file():
                with path.open("r", encoding="utf-8", errors="replace") as handle:
                    handle.seek(position)
                    for line in handle:
                        yield wire.encode({"line": line.rstrip("\n")})
                    position = handle.tell()
            current = self._db.job(job["id"])
            if not follow or current is None or current["state"] in FINAL:
                return
            time.sleep(0.3)


@contextmanager
def _aborts(context: grpc.ServicerContext) -> Iterator[None]:
    """A refused request ends as one gRPC status with the one-line reason."""
    try:
        yield
    except BastionError as exc:
        code = _STATUS.get(type(exc), grpc.StatusCode.FAILED_PRECONDITION)
        if isinstance(exc, PKIError):
            code = grpc.StatusCode.UNAUTHENTICATED
        context.abort(code, str(exc))


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(wire.CHUNK_BYTES):
            yield chunk
