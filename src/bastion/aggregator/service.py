"""Running the aggregator of a workspace: plan → strategy → checkpoints → gRPC server."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bastion.aggregator.attestation import AttestationGate
from bastion.aggregator.audit_observer import audit_observer
from bastion.aggregator.engine import Aggregator
from bastion.aggregator.events import RoundObserver
from bastion.aggregator.memory import HeapTrim, ResidentMemory, pin_mmap_threshold
from bastion.aggregator.plugins import standard_protocol
from bastion.aggregator.round_protocol import ProtocolFactory
from bastion.aggregator.task_news import AnnounceRounds
from bastion.aggregator.tracking import tracking_observers
from bastion.algorithms.registry import create_plan_strategy
from bastion.algorithms.secure_sum import secure_sum_strategy
from bastion.errors import BastionError, PKIError, PlanError
from bastion.metrics.log import METRICS_FILE, MetricsLog
from bastion.pki import Role, load_certificate, tls_files_for
from bastion.pki.revocation import CrlWatch, crl_path
from bastion.plan import Plan, load_plan
from bastion.privacy.secagg.identity import certificate_verifier
from bastion.privacy.secagg.keys import IdentityVerifier
from bastion.spec.network import check_host, check_port
from bastion.storage.atomic import atomic_write_text
from bastion.storage.checkpoints import CheckpointStore
from bastion.storage.lock import ExclusiveLock
from bastion.tee.attestation.parties import build_party
from bastion.transport.identity import (
    INSECURE_WARNING,
    Identify,
    certificate_identity,
    insecure_identity,
    reloading_server_credentials,
    revocation_checked,
)
from bastion.transport.limits import StreamLimits
from bastion.transport.server import start_server
from bastion.transport.wait import RoundNews
from bastion.workspace.bytecode import ignore_workspace_bytecode
from bastion.workspace.verify import verify_workspace

log = logging.getLogger("bastion.aggregator")

DONE_GRACE_SECONDS = 15.0


def stream_limits(plan: Plan) -> StreamLimits:
    """The plan's bounds on what one identity may hold of the server."""
    network = plan.network
    return StreamLimits(
        idle_timeout=network.idle_timeout_s,
        receive_deadline=network.receive_deadline_s,
        streams_per_peer=network.streams_per_peer,
        upload_slots=network.max_concurrent_uploads,
    )


def build_aggregator(
    plan: Plan,
    workspace: Path,
    secure_verifier: IdentityVerifier | None = None,
    protocol: ProtocolFactory | None = None,
    observers: Sequence[RoundObserver] = (),
    roster: Sequence[str] | None = None,
    open_roster: bool = False,
) -> Aggregator:
    """The round engine of a workspace: its strategy, checkpoints and metrics log.

    ``secure_verifier`` checks the certificates collaborators advertise with their secure
    aggregation keys (they check each other's too; this refuses bad ones early).
    ``protocol`` and ``observers`` plug in a round protocol and observers of your own.
    ``roster`` (a subset of the plan's) is who takes part from the start; ``open_roster``
    lets the plan's other sites join when they first call (a federation service's job).
    """
    strategy = create_plan_strategy(plan)
    if plan.uses_secure_aggregation:
        secure_sum_strategy(strategy)  # refuse a rule that needs single updates, up front
    checkpoints = workspace / plan.output.checkpoints
    store = CheckpointStore(checkpoints, plan.canonical_hash())
    metrics = MetricsLog(workspace / plan.output.logs / METRICS_FILE)
    return Aggregator(
        plan,
        strategy,
        store,
        metrics,
        protocol=protocol or standard_protocol(plan, secure_verifier, checkpoints),
        observers=[*observers, *tracking_observers(plan, workspace)],
        roster=roster,
        open_roster=open_roster,
    )


def run_aggregator(
    workspace: Path,
    host: str | None = None,
    port: int | None = None,
    insecure: bool = False,
    port_file: Path | None = None,
    allow_unsigned_workspace: bool = False,
    protocol: ProtocolFactory | None = None,
    observers: Sequence[RoundObserver] = (),
    pki_dir: Path | None = None,
    roster: Sequence[str] | None = None,
    open_roster: bool = False,
    stop: threading.Event | None = None,
    own_process: bool = False,
) -> Aggregator:
    """Serve the federation until every round is done; returns the finished aggregator.

    The workspace is verified against its signed manifest first, and collaborators that
    report another workspace measurement are refused. ``pki_dir`` holds ca.crt and the
    aggregator's key and certificate (default: the plan's ``network.pki_dir``).
    ``own_process``: this process exists to serve (the CLI, a job process), so what start-up
    built is frozen out of the garbage collector's sight (``gc.freeze``): full collections,
    in rounds and at exit, no longer walk it (measured: a federation of 10 used about a
    fifth less CPU).
    """
    workspace = Path(workspace)
    plan = load_plan(workspace)
    pin_mmap_threshold()
    host = check_host(host, "--host") if host else plan.network.listen
    port = plan.network.port if port is None else check_port(port, "--port", allow_zero=True)
    pki = Path(pki_dir) if pki_dir is not None else workspace / plan.network.pki_dir
    # One aggregator per federation: held until this process exits, whatever the port.
    with ExclusiveLock(workspace / plan.output.checkpoints, "aggregator"):
        if insecure:
            log.warning(INSECURE_WARNING)
            credentials = None
            identify: Identify = insecure_identity
        else:
            tls = tls_files_for(pki, plan.network.aggregator_name)
            identity = tls.check()
            if identity.role is not Role.AGGREGATOR:
                raise PKIError(
                    f"{tls.cert} belongs to {identity}; the aggregator needs an aggregator certificate"
                )
            # The certificate is read again when renewed; every call is checked against the
            # CA's current revocation list (pki/ca.crl, reloaded when it changes).
            credentials = reloading_server_credentials(tls)
            crl = CrlWatch(crl_path(pki), pki / "ca.crt")
            identify = revocation_checked(certificate_identity, crl)
        verified = verify_workspace(
            workspace, plan, pki / "ca.crt", allow_unsigned=allow_unsigned_workspace
        )
        ignore_workspace_bytecode(workspace)
        verifier = None
        if plan.uses_secure_aggregation:
            if insecure:
                raise PlanError(
                    "secure aggregation signs each collaborator's keys with its certificate's key; "
                    "it cannot run with --insecure"
                )
            verifier = certificate_verifier(tls)
        if not insecure:
            # The signed, hash-chained audit log; refuses a rolled-back checkpoint.
            audit = audit_observer(plan, workspace, tls, verified.measurement)
            crl.subscribe(audit.revocation_list)
            observers = [*observers, audit]
        # Held task requests are answered as soon as a round opens (long-poll GetTasks).
        news = RoundNews()
        observers = [*observers, AnnounceRounds(news)]
        aggregator = build_aggregator(
            plan,
            workspace,
            secure_verifier=verifier,
            protocol=protocol,
            observers=[*observers, HeapTrim(), ResidentMemory()],
            roster=roster,
            open_roster=open_roster,
        )
        gate = None
        if plan.attestation is not None:
            if insecure:
                raise PlanError(
                    "attestation binds evidence to TLS keys; it cannot run with --insecure"
                )
            spec = plan.attestation
            party = build_party(
                spec.policy,
                spec.provider,
                spec.simulated_dir,
                workspace,
                plan.canonical_hash(),
                verified.measurement,
            )
            gate = AttestationGate(
                party, load_certificate(tls.cert), aggregator.metrics, aggregator.record_attestation
            )
        server = start_server(
            aggregator,
            plan.canonical_hash(),
            host,
            port,
            credentials,
            identify,
            plan.network.chunk_bytes,
            gate=gate,
            workspace_measurement=verified.measurement,
            max_concurrent_uploads=plan.network.max_concurrent_uploads,
            limits=stream_limits(plan),
            # Room for every site's full share of calls: one peer holds streams_per_peer.
            max_workers=max(32, plan.network.streams_per_peer * len(plan.collaborator_names()) + 8),
            max_receive_bytes=None if plan.uses_secure_aggregation else aggregator.max_update_bytes,
            news=news,
        )
        log.info(
            "aggregator for plan %r listening on %s:%d (%s)",
            plan.name,
            host,
            server.port,
            "INSECURE plain text" if insecure else "mutual TLS",
        )
        if port_file is not None:
            atomic_write_text(port_file, str(server.port))

        stop = stop or threading.Event()

        def _request_stop(signum: int, _frame: object) -> None:
            log.warning(
                "signal %d: stopping the aggregator (state is checkpointed every round)", signum
            )
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _request_stop)
        if own_process:  # start-up's objects live as long as the process
            gc.collect()
            gc.freeze()
        try:
            while not stop.is_set() and not aggregator.finished.wait(0.5):
                aggregator.check_timeout()
                if aggregator.halted is not None:
                    raise BastionError(aggregator.halted)
            if aggregator.finished.is_set():
                _tell_everyone_done(aggregator, server.servicer.told_done)
        finally:
            server.stop(grace=1.0)
        return aggregator


def _tell_everyone_done(aggregator: Aggregator, told_done: set[str]) -> None:
    """Keep serving briefly so polling collaborators hear "done" instead of a dead socket."""
    deadline = time.monotonic() + DONE_GRACE_SECONDS
    roster = set(aggregator.roster)
    while time.monotonic() < deadline and not roster <= told_done:
        time.sleep(0.1)
