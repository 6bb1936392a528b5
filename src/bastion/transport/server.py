"""The aggregator's gRPC server: mutual TLS, identity from the client certificate.

The servicer is a thin edge over ``bastion.aggregator.core.Aggregator``: it names
the caller from its verified certificate (never from the request), checks the plan
hash, streams the model out in chunks and assembles results with size limits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc

from bastion.aggregator.attestation import AttestationGate, NotAttested
from bastion.aggregator.core import Aggregator
from bastion.aggregator.records import NotAssigned, UnknownCollaborator
from bastion.errors import BastionError, ProtocolError
from bastion.privacy.secagg.session import Step
from bastion.tee.attestation import AttestationError
from bastion.transport import bastion_pb2 as pb
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.frames import assemble, to_chunk
from bastion.transport.identity import Identify, peer_certificate
from bastion.transport.secagg_frames import (
    first_header,
    parse_step,
    read_payload,
    reply_parts,
)

log = logging.getLogger("bastion.transport")

_ACTIONS = {"run": pb.TasksReply.RUN, "wait": pb.TasksReply.WAIT, "done": pb.TasksReply.DONE}


def channel_options(chunk_bytes: int) -> list[tuple[str, int]]:
    """Message limits sized to one chunk plus framing, never gRPC's 4 MiB default."""
    limit = chunk_bytes + 1024 * 1024
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        aggregator: Aggregator,
        plan_hash: str,
        identify: Identify,
        gate: AttestationGate | None = None,
        workspace_measurement: str | None = None,
    ) -> None:
        self._aggregator = aggregator
        self._gate = gate
        self._workspace_measurement = workspace_measurement
        # Uploads beyond this wait in gRPC flow control, so memory is O(model), not O(clients).
        self._uploads = threading.BoundedSemaphore(aggregator.plan.network.max_concurrent_uploads)
        self._plan_hash = plan_hash
        self._identify = identify
        self.told_done: set[str] = set()

    def _caller(self, context: grpc.ServicerContext) -> str:
        try:
            return self._identify(context)
        except BastionError as exc:
            log.warning("refused a peer: %s", exc)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # unreachable: abort raises

    def GetTasks(self, request: pb.TasksRequest, context: grpc.ServicerContext) -> pb.TasksReply:
        name = self._caller(context)
        if request.plan_hash != self._plan_hash:
            log.warning("refused %s: its plan differs from the aggregator's", name)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"plan mismatch: the aggregator runs plan {self._plan_hash[:12]}…, "
                f"{name} has {request.plan_hash[:12] or 'none'}…; use the federation's plan.yaml",
            )
        self._check_workspace(name, request.workspace_measurement, context)
        try:
            assignment = self._aggregator.get_tasks(name)
        except UnknownCollaborator as exc:
            log.warning("refused %s: %s", name, exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if assignment.action == "done":
            self.told_done.add(name)
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

    def _check_workspace(self, name: str, reported: str, context: grpc.ServicerContext) -> None:
        """Refuse a collaborator whose workspace measurement differs from ours.

        The measurement is the collaborator's own report: it stops an honest site running a
        stale or altered workspace; only attestation proves what code a site really runs.
        """
        expected = self._workspace_measurement
        if expected is None or reported == expected:
            return
        log.warning("refused %s: its workspace measurement differs from the aggregator's", name)
        theirs = f"{reported[:16]}…" if reported else "no measurement (an older Bastion?)"
        context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"workspace mismatch: the aggregator runs workspace measurement {expected[:16]}…, "
            f"{name} reports {theirs}; both must run the same signed workspace (compare "
            "`bastion workspace verify` on both hosts)",
        )

    def GetModel(
        self, request: pb.ModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TensorChunk]:
        name = self._caller(context)
        self._require_attested(name, context)
        try:
            frames = self._aggregator.model_frames(name, request.round)
        except (UnknownCollaborator, NotAssigned) as exc:
            log.warning("refused model download by %s: %s", name, exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        log.info("sending the round %d model to %s", request.round, name)
        for frame in frames:
            yield to_chunk(frame)

    def _require_attested(self, name: str, context: grpc.ServicerContext) -> None:
        if self._gate is None:
            return
        try:
            self._gate.require(name, peer_certificate(context))
        except NotAttested as exc:
            log.warning("refused %s: %s", name, exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    def AttestAggregator(
        self, request: pb.AggregatorChallenge, context: grpc.ServicerContext
    ) -> pb.AggregatorEvidence:
        name = self._caller(context)
        if self._gate is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this federation's plan has no attestation"
            )
        assert self._gate is not None
        try:
            evidence, challenge = self._gate.prove(name, request.nonce)
        except BastionError as exc:
            log.error("cannot produce attestation evidence for %s: %s", name, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"aggregator cannot attest: {exc}")
        return pb.AggregatorEvidence(
            kind=evidence.kind,
            quote=evidence.quote,
            certificate=self._gate.certificate_pem,
            nonce=challenge,
        )

    def AttestCollaborator(
        self, request: pb.CollaboratorEvidence, context: grpc.ServicerContext
    ) -> pb.AttestationAck:
        name = self._caller(context)
        certificate = peer_certificate(context)
        if self._gate is None or certificate is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this federation's plan has no attestation"
            )
        assert self._gate is not None and certificate is not None
        try:
            self._gate.admit(name, certificate, request.kind, request.quote, request.nonce)
        except AttestationError as exc:
            return pb.AttestationAck(accepted=False, reason=str(exc))
        return pb.AttestationAck(accepted=True)

    def SendResult(
        self, request_iterator: Iterator[pb.ResultChunk], context: grpc.ServicerContext
    ) -> pb.ResultAck:
        name = self._caller(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a result must start with its header")
        assert first is not None  # abort() raised otherwise
        header = first.header
        self._require_attested(name, context)
        if header.declined:
            return self._decline(name, header, request_iterator, context)
        try:
            task = self._aggregator.check_result_allowed(name, header.round, header.task)
        except (UnknownCollaborator, NotAssigned) as exc:
            log.warning("refused a result from %s: %s", name, exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        with self._uploads:
            weights = None
            try:
                chunks = (_tensor_part(message) for message in request_iterator)
                received = assemble(chunks, self._aggregator.max_update_bytes)
                if task.kind == "train" or received:
                    weights = received
            except ProtocolError as exc:
                accepted, reason = self._aggregator.reject_result(
                    name, header.round, header.task, str(exc)
                )
                return pb.ResultAck(accepted=accepted, reason=reason)
            try:
                accepted, reason = self._aggregator.submit_result(
                    name,
                    header.round,
                    header.task,
                    int(header.example_count),
                    dict(header.metrics),
                    weights,
                )
            except NotAssigned as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            del weights, received
        return pb.ResultAck(accepted=accepted, reason=reason)

    def _decline(
        self,
        name: str,
        header: pb.ResultHeader,
        rest: Iterator[pb.ResultChunk],
        context: grpc.ServicerContext,
    ) -> pb.ResultAck:
        """A collaborator declines its train task: a header alone, with the reason."""
        if next(rest, None) is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a declined task carries no tensors")
        try:
            accepted, reason = self._aggregator.decline_task(
                name, header.round, header.task, header.declined, dict(header.metrics)
            )
        except (UnknownCollaborator, NotAssigned) as exc:
            log.warning("refused a decline from %s: %s", name, exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.ResultAck(accepted=accepted, reason=reason)

    def SecAggSend(
        self, request_iterator: Iterator[pb.SecAggPart], context: grpc.ServicerContext
    ) -> pb.SecAggAck:
        name = self._caller(context)
        self._require_attested(name, context)
        try:
            header = first_header(request_iterator)
            step = parse_step(header.step)
            limit = self._aggregator.secure_payload_limit(name, header.round, header.attempt, step)
        except UnknownCollaborator as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except ProtocolError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if limit == 0:
            return pb.SecAggAck(accepted=False, reason="no secure aggregation session is open")
        # A masked input is model-sized: it waits for an upload slot like a plain result.
        with self._uploads if step is Step.MASKED_INPUT else contextlib.nullcontext():
            try:
                payload = read_payload(request_iterator, header.total_bytes, limit)
            except ProtocolError as exc:
                log.warning("refused %s's secure aggregation message: %s", name, exc)
                return pb.SecAggAck(accepted=False, reason=str(exc))
            accepted, reason = self._aggregator.secure_send(
                name, header.round, header.attempt, step, payload, dict(header.metrics)
            )
        return pb.SecAggAck(accepted=accepted, reason=reason)

    def SecAggFetch(
        self, request: pb.SecAggPoll, context: grpc.ServicerContext
    ) -> Iterator[pb.SecAggPart]:
        name = self._caller(context)
        self._require_attested(name, context)
        try:
            step = parse_step(request.step)
            reply = self._aggregator.secure_fetch(name, request.round, request.attempt, step)
        except UnknownCollaborator as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except ProtocolError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        chunk_bytes = int(self._aggregator.plan.network.chunk_mib * 1024 * 1024)
        yield from reply_parts(reply, chunk_bytes)


def _tensor_part(message: pb.ResultChunk) -> pb.TensorChunk:
    if message.WhichOneof("part") != "tensor":
        raise ProtocolError("a result carries exactly one header, first")
    return message.tensor


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    servicer: FederationServicer

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace).wait()


def start_server(
    aggregator: Aggregator,
    plan_hash: str,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    identify: Identify,
    chunk_bytes: int,
    max_workers: int = 32,
    on_start: Callable[[int], None] | None = None,
    gate: AttestationGate | None = None,
    workspace_measurement: str | None = None,
) -> RunningServer:
    """Bind and start the server; ``credentials=None`` means plain text (``--insecure``)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bastion-rpc"),
        options=channel_options(chunk_bytes),
    )
    servicer = FederationServicer(aggregator, plan_hash, identify, gate, workspace_measurement)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
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
