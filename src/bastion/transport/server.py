"""The aggregator's gRPC server: mutual TLS, identity from the client certificate.

The servicer is a thin edge over a ``bastion.protocol.FederationPort``: it names the
caller from its verified certificate (never from the request), checks the plan hash
and workspace measurement, streams the model out in chunks and hands each result to
``take_result``. Every refusal the port raises becomes a gRPC status through one table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from bastion.errors import BastionError, PKIError, ProtocolError
from bastion.framing import Frame
from bastion.protocol import (
    AttestationPort,
    Busy,
    CannotServe,
    FederationPort,
    NotAssigned,
    NotAttested,
    NotConfigured,
    PlanMismatch,
    Refused,
    ResultHeader,
    RoundOver,
    ServesOneModel,
    Unauthenticated,
    UnknownCollaborator,
    take_result,
)
from bastion.tee.attestation import AttestationError
from bastion.transport import bastion_pb2 as pb
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.encoded import (
    ResultPart,
    RoundModelCache,
    decode_result_part,
    encode_chunk,
    passthrough,
)
from bastion.transport.identity import Identify, peer_certificate
from bastion.transport.limits import (
    MEASUREMENT_HEADER,
    PLAN_HEADER,
    RECEIPT_HEADER,
    PeerStreams,
    RefusalLog,
    StreamLimits,
    Watched,
)
from bastion.transport.read_ahead import READ_AHEAD_FROM_BYTES, read_ahead
from bastion.transport.secagg_frames import first_header, read_payload, reply_parts
from bastion.transport.wait import RoundNews, TaskWaiter

log = logging.getLogger("bastion.transport")

_ACTIONS = {"run": pb.TasksReply.RUN, "wait": pb.TasksReply.WAIT, "done": pb.TasksReply.DONE}

#: The one mapping from the port's typed refusals (and bad input) to gRPC status codes.
STATUS_FOR: tuple[tuple[type[BastionError], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PKIError, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownCollaborator, grpc.StatusCode.PERMISSION_DENIED),
    (RoundOver, grpc.StatusCode.ABORTED),
    (NotAssigned, grpc.StatusCode.PERMISSION_DENIED),
    (NotAttested, grpc.StatusCode.PERMISSION_DENIED),
    (PlanMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (NotConfigured, grpc.StatusCode.FAILED_PRECONDITION),
    (CannotServe, grpc.StatusCode.UNAVAILABLE),
    (Busy, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),
    (Refused, grpc.StatusCode.PERMISSION_DENIED),
)


def status_for(error: BastionError) -> grpc.StatusCode | None:
    """The gRPC status a refusal maps to; None for an error that is not a refusal."""
    return next((code for kind, code in STATUS_FOR if isinstance(error, kind)), None)


@contextlib.contextmanager
def answering(
    context: grpc.ServicerContext,
    name: str,
    what: str,
    refusals: RefusalLog | None = None,
    serial: str = "",
) -> Iterator[None]:
    """Turn a refusal raised while serving ``what`` into its status code, logged once
    (once per peer, serial and reason per interval with ``refusals``)."""
    try:
        yield
    except BastionError as exc:
        code = status_for(exc)
        if code is None:
            raise
        if refusals is None:
            log.warning("refused %s by %s: %s", what, name, exc)
        else:
            refusals.refused(name, serial, f"{what}:{type(exc).__name__}", f"{what}: {exc}")
        context.abort(code, str(exc))


#: Room for a message's header fields (a tensor's name, dtype, shape; a stage's metadata).
FRAMING_BYTES = 64 * 1024


def channel_options(chunk_bytes: int) -> list[tuple[str, int]]:
    """Message limits sized to one chunk plus framing, never gRPC's 4 MiB default.

    No BDP probing: with it, gRPC grows each stream's receive window towards the link's
    bandwidth-delay product and buffers that much of every transfer ahead of its reader
    (measured on loopback: 0.5-0.8x a 100 MB model per stream on the aggregator); without
    it a stream's window follows the message its reader asks for, so memory stays flat in
    the number of collaborators, on both sides."""
    limit = chunk_bytes + 1024 * 1024
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.bdp_probe", 0),
    ]


def server_options(chunk_bytes: int) -> list[tuple[str, int]]:
    """The channel options, and a port of our own: gRPC's default SO_REUSEPORT would let a
    second aggregator bind the same port and take half the sites (split brain)."""
    return [*channel_options(chunk_bytes), ("grpc.so_reuseport", 0)]


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        port: FederationPort,
        plan_hash: str,
        identify: Identify,
        chunk_bytes: int,
        max_concurrent_uploads: int = 2,
        gate: AttestationPort | None = None,
        workspace_measurement: str | None = None,
        limits: StreamLimits | None = None,
        news: RoundNews | None = None,
        max_waiting: int = 64,
    ) -> None:
        self._port = port
        self._gate = gate
        self._workspace_measurement = workspace_measurement
        limits = limits or StreamLimits()
        if limits.upload_slots != max_concurrent_uploads:
            limits = StreamLimits(
                limits.idle_timeout,
                limits.receive_deadline,
                limits.streams_per_peer,
                max_concurrent_uploads,
                limits.refusal_log_interval,
            )
        # Uploads beyond the slots wait in gRPC flow control, so memory is O(model), not
        # O(clients); each identity holds a bounded share of streams, each stream a deadline.
        self._streams = PeerStreams(limits)
        self._plan_checked: set[str] = set()
        self._checked_lock = threading.Lock()
        self._plan_hash = plan_hash
        self._identify = identify
        self._chunk_bytes = chunk_bytes
        self.told_done: set[str] = set()
        # The round's model is encoded once, for every download (transport/encoded.py).
        self._model_cache = RoundModelCache()
        # Long-poll: a waiting collaborator hears of its next task at once (transport/wait.py);
        # a hold stays well inside the idle timeout that would cut the call.
        self.waiter = TaskWaiter(
            lambda collaborator: port.get_tasks(collaborator),  # the port is read per call
            news,
            hold_seconds=min(2.0, limits.idle_timeout / 4),
            max_waiting=max_waiting,
        )

    def close(self) -> None:
        self._streams.close()

    def _caller(self, context: grpc.ServicerContext) -> str:
        try:
            return self._identify(context)
        except BastionError as exc:
            self._streams.refusals.refused(
                context.peer(), _serial(context), "identity", f"a peer: {exc}"
            )
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # unreachable: abort raises

    @contextlib.contextmanager
    def _admitted(
        self, context: grpc.ServicerContext, what: str, needs_plan: bool = True
    ) -> Iterator[tuple[str, Watched]]:
        """Identity, role, roster and plan checked before anything of the call is read;
        then one of the caller's bounded streams, watched, for the rest of the call."""
        name = self._caller(context)
        serial = _serial(context)
        with answering(context, name, what, self._streams.refusals, serial):
            self._port.check_member(name)
            if needs_plan:
                self._check_plan_metadata(name, context)
            stream = self._streams.stream(name, serial, context, what)
            watched = stream.__enter__()
        try:
            yield name, watched
        finally:
            stream.__exit__(None, None, None)

    def _answering(self, context: grpc.ServicerContext, name: str, what: str) -> Any:
        return answering(context, name, what, self._streams.refusals, _serial(context))

    def _check_plan_metadata(self, name: str, context: grpc.ServicerContext) -> None:
        """The plan and measurement every call carries in its metadata; a caller that sends
        none must have matched them in ``GetTasks`` (an older client) before any stream."""
        headers = dict(context.invocation_metadata() or ())
        plan_hash = headers.get(PLAN_HEADER)
        if plan_hash is not None:
            self._check_plan(name, str(plan_hash), str(headers.get(MEASUREMENT_HEADER, "")))
            return
        with self._checked_lock:
            if name in self._plan_checked:
                return
        raise PlanMismatch(
            f"{name} sent no plan hash; ask for tasks (GetTasks) with the federation's plan first"
        )

    def GetTasks(self, request: pb.TasksRequest, context: grpc.ServicerContext) -> pb.TasksReply:
        with self._admitted(context, "a task request", needs_plan=False) as (name, _):
            with self._answering(context, name, "a task request"):
                self._check_plan(name, request.plan_hash, request.workspace_measurement)
                with self._checked_lock:
                    self._plan_checked.add(name)
                assignment = self.waiter.get_tasks(name)
            if assignment.action == "done":
                self.told_done.add(name)
            if assignment.receipts:
                context.set_trailing_metadata(
                    tuple((RECEIPT_HEADER, receipt) for receipt in assignment.receipts)
                )
            return pb.TasksReply(
                action=_ACTIONS[assignment.action],
                round=assignment.round,
                tasks=[
                    pb.Task(name=t.name, kind=t.kind, model=t.model, args_json=json.dumps(t.args))
                    for t in assignment.tasks
                ],
                retry_after_seconds=assignment.retry_after,
                total_rounds=assignment.total_rounds,
            )

    def _check_plan(self, name: str, plan_hash: str, reported: str) -> None:
        """Refuse a collaborator whose plan or workspace measurement differs from ours.

        The measurement is the collaborator's own report: it stops an honest site running a
        stale or altered workspace; only attestation proves what code a site really runs.
        """
        if plan_hash != self._plan_hash:
            log.warning("refused %s: its plan differs from the aggregator's", name)
            raise PlanMismatch(
                f"plan mismatch: the aggregator runs plan {self._plan_hash[:12]}…, "
                f"{name} has {plan_hash[:12] or 'none'}…; use the federation's plan.yaml"
            )
        expected = self._workspace_measurement
        if expected is None or reported == expected:
            return
        log.warning("refused %s: its workspace measurement differs from the aggregator's", name)
        theirs = f"{reported[:16]}…" if reported else "no measurement (an older Bastion?)"
        raise PlanMismatch(
            f"workspace mismatch: the aggregator runs workspace measurement {expected[:16]}…, "
            f"{name} reports {theirs}; both must run the same signed workspace (compare "
            "`bastion workspace verify` on both hosts)"
        )

    def GetModel(self, request: pb.ModelRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        with self._admitted(context, "a model download") as (name, watched):
            with self._answering(context, name, "a model download"):
                self._require_attested(name, context)
                frames = self._port.model_frames(name, request.round)
                shared = (
                    self._port.shared_model(name, request.round)
                    if isinstance(self._port, ServesOneModel)
                    else None
                )
                if shared is not None:
                    chunks = self._model_cache.chunks(shared[0], shared[1], frames)
                else:
                    chunks = (encode_chunk(frame) for frame in frames)
            log.info("sending the round %d model to %s", request.round, name)
            yield from self._streams.sent(watched, chunks)

    def _require_attested(self, name: str, context: grpc.ServicerContext) -> None:
        if self._gate is not None:
            self._gate.require(name, peer_certificate(context))

    def _attestation_gate(self) -> AttestationPort:
        if self._gate is None:
            raise NotConfigured("this federation's plan has no attestation")
        return self._gate

    def AttestAggregator(
        self, request: pb.AggregatorChallenge, context: grpc.ServicerContext
    ) -> pb.AggregatorEvidence:
        with self._admitted(context, "an attestation challenge") as (name, _):
            with self._answering(context, name, "an attestation challenge"):
                gate = self._attestation_gate()
                try:
                    evidence, challenge = gate.prove(name, request.nonce)
                except BastionError as exc:
                    log.error("cannot produce attestation evidence for %s: %s", name, exc)
                    raise CannotServe(f"aggregator cannot attest: {exc}") from None
            return pb.AggregatorEvidence(
                kind=evidence.kind,
                quote=evidence.quote,
                certificate=gate.certificate_pem,
                nonce=challenge,
            )

    def AttestCollaborator(
        self, request: pb.CollaboratorEvidence, context: grpc.ServicerContext
    ) -> pb.AttestationAck:
        with self._admitted(context, "attestation evidence") as (name, _):
            certificate = peer_certificate(context)
            with self._answering(context, name, "attestation evidence"):
                gate = self._attestation_gate()
                if certificate is None:
                    raise NotConfigured("attestation needs the caller's TLS certificate")
                try:
                    gate.admit(name, certificate, request.kind, request.quote, request.nonce)
                except AttestationError as exc:
                    return pb.AttestationAck(accepted=False, reason=str(exc))
            return pb.AttestationAck(accepted=True)

    def SendResult(
        self, request_iterator: Iterator[ResultPart], context: grpc.ServicerContext
    ) -> pb.ResultAck:
        with self._admitted(context, "a result") as (name, watched):
            with self._answering(context, name, "a result"):
                self._require_attested(name, context)
                messages = self._streams.received(watched, request_iterator)
                first = next(messages, None)
                if first is None or first.header is None:
                    raise ProtocolError("a result must start with its header")
                message = first.header
                header = ResultHeader(
                    message.round,
                    message.task,
                    int(message.example_count),
                    dict(message.metrics),
                    message.declined or None,
                    message.failed or None,
                )
                if header.declined is not None or header.failed is not None:
                    ack = take_result(self._port, name, header, _frames(messages))
                else:
                    self._port.check_result_allowed(name, header.round, header.task)
                    with self._streams.upload(name), contextlib.ExitStack() as slot:
                        if self._port.max_update_bytes >= READ_AHEAD_FROM_BYTES:
                            ahead = read_ahead(messages, name=f"bastion-upload-{name}")
                            slot.callback(ahead.close)
                            messages = ahead
                        frames = self._slotted(watched, messages, slot)
                        ack = take_result(self._port, name, header, frames)
            return pb.ResultAck(accepted=ack.accepted, reason=ack.reason)

    def _slotted(
        self, watched: Watched, messages: Iterator[ResultPart], slot: contextlib.ExitStack
    ) -> Iterator[Frame]:
        """The result's frames; an upload slot is taken when the first tensor arrives, so a
        result without tensors never waits behind another site's upload."""
        for index, frame in enumerate(_frames(messages)):
            if index == 0:
                slot.enter_context(self._streams.slot(watched))
            yield frame

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        with self._admitted(context, "a heartbeat") as (name, _):
            with self._answering(context, name, "a heartbeat"):
                current = self._port.heartbeat(name, request.round)
            return pb.HeartbeatReply(round=current)

    def SecAggSend(
        self, request_iterator: Iterator[pb.SecAggPart], context: grpc.ServicerContext
    ) -> pb.SecAggAck:
        with self._admitted(context, "a secure aggregation message") as (name, watched):
            messages = self._streams.received(watched, request_iterator)
            with self._answering(context, name, "a secure aggregation message"):
                self._require_attested(name, context)
                header = first_header(messages)
                limit = self._port.stage_payload_limit(
                    name, header.round, header.attempt, header.step
                )
            if limit == 0:
                return pb.SecAggAck(accepted=False, reason="no secure aggregation session is open")
            # A large message (a masked model) waits for an upload slot like a plain result.
            large = header.total_bytes > self._chunk_bytes
            with self._answering(context, name, "a secure aggregation message"):
                upload = self._streams.upload(name) if large else contextlib.nullcontext()
                with upload, self._streams.slot(watched) if large else contextlib.nullcontext():
                    try:
                        payload = read_payload(messages, header.total_bytes, limit)
                    except ProtocolError as exc:
                        log.warning("refused %s's secure aggregation message: %s", name, exc)
                        return pb.SecAggAck(accepted=False, reason=str(exc))
                    ack = self._port.stage_send(
                        name,
                        header.round,
                        header.attempt,
                        header.step,
                        payload,
                        dict(header.metrics),
                    )
            return pb.SecAggAck(accepted=ack.accepted, reason=ack.reason)

    def SecAggFetch(
        self, request: pb.SecAggPoll, context: grpc.ServicerContext
    ) -> Iterator[pb.SecAggPart]:
        with self._admitted(context, "a secure aggregation poll") as (name, watched):
            with self._answering(context, name, "a secure aggregation poll"):
                self._require_attested(name, context)
                reply = self._port.stage_fetch(name, request.round, request.attempt, request.step)
            yield from self._streams.sent(watched, reply_parts(reply, self._chunk_bytes))


def _serial(context: grpc.ServicerContext) -> str:
    """The caller's certificate serial (hex) for the log; empty without one."""
    try:
        certificate = peer_certificate(context)
    except BastionError:
        return ""
    return f"{certificate.serial_number:x}" if certificate is not None else ""


def _frames(messages: Iterator[ResultPart]) -> Iterator[Frame]:
    return (_tensor_part(part) for part in messages)


def _tensor_part(message: ResultPart) -> Frame:
    if message.frame is None:
        raise ProtocolError("a result carries exactly one header, first")
    return message.frame


class _Handlers:
    """Stands in for a server to collect the generated code's method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


SERVICE = "bastion.v1.Federation"


def add_servicer(servicer: FederationServicer, server: grpc.Server) -> None:
    """Register the generated handlers, with ``GetModel`` sending pre-encoded chunks as they
    are (``encoded.passthrough``) instead of serializing a message per chunk, and
    ``SendResult`` reading each chunk's payload where it arrived
    (``encoded.decode_result_part``)."""
    collected = _Handlers()
    pb_grpc.add_FederationServicer_to_server(servicer, collected)
    handlers = collected.handlers
    handlers["GetModel"] = grpc.unary_stream_rpc_method_handler(
        servicer.GetModel,
        request_deserializer=pb.ModelRequest.FromString,
        response_serializer=passthrough,
    )
    handlers["SendResult"] = grpc.stream_unary_rpc_method_handler(
        servicer.SendResult,
        request_deserializer=decode_result_part,
        response_serializer=pb.ResultAck.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    servicer: FederationServicer

    def stop(self, grace: float = 2.0) -> None:
        self.servicer.waiter.stop()
        self.server.stop(grace).wait()
        self.servicer.close()


def start_server(
    port_impl: FederationPort,
    plan_hash: str,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    identify: Identify,
    chunk_bytes: int,
    max_workers: int = 32,
    on_start: Callable[[int], None] | None = None,
    gate: AttestationPort | None = None,
    workspace_measurement: str | None = None,
    max_concurrent_uploads: int = 2,
    limits: StreamLimits | None = None,
    max_receive_bytes: int | None = None,
    news: RoundNews | None = None,
) -> RunningServer:
    """Bind and start the server; ``credentials=None`` means plain text (``--insecure``).

    ``news``: announced by the aggregator when its rounds move, so held task requests are
    answered at once (without it they ask the port every 50 ms while held).

    ``max_receive_bytes`` caps one incoming message below the chunk size when the model is
    smaller (gRPC refuses a longer message from its length prefix, before Python sees it).
    """
    options = server_options(chunk_bytes)
    if max_receive_bytes is not None:
        limit = min(chunk_bytes + 1024 * 1024, max_receive_bytes + FRAMING_BYTES)
        options = [
            (key, limit if key == "grpc.max_receive_message_length" else value)
            for key, value in options
        ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bastion-rpc"),
        options=options,
    )
    servicer = FederationServicer(
        port_impl,
        plan_hash,
        identify,
        chunk_bytes,
        max_concurrent_uploads,
        gate,
        workspace_measurement,
        limits,
        news,
        # Holds never take more than half the threads: the rest serve models and results.
        max_waiting=max(1, max_workers // 2),
    )
    add_servicer(servicer, server)
    address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        bound = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise BastionError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise BastionError(f"cannot listen on {address}: address in use or not available")
    server.start()
    if on_start:
        on_start(bound)
    return RunningServer(server, bound, servicer)
