"""The collaborator's side of the gRPC transport."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc

from bastion.buffers import RetiredBuffers
from bastion.errors import BastionError
from bastion.framing import Chunking, assemble_frames, iter_frames
from bastion.pki.layout import TLSFiles
from bastion.privacy.secagg.session import Step
from bastion.protocol import Assignment, RoundOver, StageReply
from bastion.spec.network import AddressError, parse_address
from bastion.spec.tasks import TaskSpec
from bastion.tensors import Weights
from bastion.transport import bastion_pb2 as pb
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.diagnose import Diagnosis, explain_unreachable
from bastion.transport.encoded import decode_model_chunk, encode_result_chunk, passthrough
from bastion.transport.identity import INSECURE_NAME_HEADER, channel_credentials
from bastion.transport.limits import MEASUREMENT_HEADER, PLAN_HEADER, RECEIPT_HEADER
from bastion.transport.secagg_frames import read_reply, send_parts
from bastion.transport.server import channel_options

_ACTIONS = {pb.TasksReply.RUN: "run", pb.TasksReply.WAIT: "wait", pb.TasksReply.DONE: "done"}
#: ``SendResult`` called with a serializer that takes pre-encoded chunks as they are.
SEND_RESULT = "/bastion.v1.Federation/SendResult"
GET_MODEL = "/bastion.v1.Federation/GetModel"
ResultAck = pb.ResultAck.FromString
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class AggregatorUnavailable(BastionError):
    """The aggregator cannot be reached right now; the collaborator retries with backoff."""


class AggregatorRefused(BastionError):
    """The aggregator refused this collaborator (identity, plan, or assignment)."""


class AggregatorMisconfigured(BastionError):
    """The address answers, but not as this federation's aggregator: retrying cannot help."""


class GrpcAggregatorClient:
    """Talks to the aggregator at ``target`` over mutual TLS (or plain text if insecure)."""

    def __init__(
        self,
        target: str,
        plan_hash: str,
        chunking: Chunking,
        max_model_bytes: int,
        tls: tuple[bytes, bytes, bytes] | None,
        insecure_name: str | None = None,
        timeout_seconds: float = 600.0,
        workspace_measurement: str = "",
        check_server: Callable[[], None] | None = None,
        plan_tasks: Mapping[str, TaskSpec] | None = None,
        tls_files: TLSFiles | None = None,
        receipts_dir: Path | None = None,
    ) -> None:
        """``check_server`` verifies who answers (the plan's aggregator) before the first
        task request and after the aggregator was unreachable; ``plan_tasks`` (the signed
        plan's) define each task the aggregator names: its reply never supplies arguments."""
        self._check_server = check_server
        self._server_checked = check_server is None
        self._plan_tasks = dict(plan_tasks) if plan_tasks is not None else None
        # A renewed certificate (same files, new content) is picked up between rounds.
        self._tls_files = tls_files
        self._tls_stamp = _stamp(tls_files) if tls_files is not None else None
        self._options = channel_options(chunking.largest)
        self._receipts_dir = receipts_dir
        options = self._options
        if tls is not None:
            self._channel = grpc.secure_channel(target, channel_credentials(*tls), options=options)
            self._metadata: tuple[tuple[str, str], ...] = ()
        else:
            self._channel = grpc.insecure_channel(target, options=options)
            self._metadata = ((INSECURE_NAME_HEADER, insecure_name or ""),)
        # Every call names the plan and workspace it runs, so the aggregator checks them
        # before it reads anything else of the call.
        self._metadata += (
            (PLAN_HEADER, plan_hash),
            (MEASUREMENT_HEADER, workspace_measurement),
        )
        self._stub = pb_grpc.FederationStub(self._channel)
        self._target = target
        self._plan_hash = plan_hash
        self._workspace_measurement = workspace_measurement
        self._chunking = chunking
        self._max_model_bytes = max_model_bytes
        #: the last model's buffers: the next one is received into them once it is let go
        self._received = RetiredBuffers()
        self._timeout = timeout_seconds
        self._ca = tls[0] if tls is not None else None
        self._explained: dict[str, Diagnosis] = {}

    def close(self) -> None:
        self._channel.close()

    def _translate(self, exc: grpc.RpcError, what: str) -> BastionError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in _RETRYABLE:
            diagnosis = self._explain(details)
            if diagnosis.permanent:
                return AggregatorMisconfigured(diagnosis.reason)
            return AggregatorUnavailable(
                f"aggregator at {self._target} unreachable ({what}): {diagnosis.reason}"
            )
        if code == grpc.StatusCode.ABORTED:
            return RoundOver(f"the aggregator moved on ({what}): {details}")
        return AggregatorRefused(
            f"aggregator refused {what}: {details} [{code.name if code else '?'}]"
        )

    def _explain(self, details: str) -> Diagnosis:
        """What went wrong in the user's terms, once per kind of failure (it dials out to look)."""
        if details not in self._explained:
            try:
                found = explain_unreachable(parse_address(self._target, 1), self._ca)
            except (AddressError, ValueError, OSError):
                found = Diagnosis("")
            self._explained[details] = found if found.reason else Diagnosis(_short(details))
        return self._explained[details]

    def _verify_server(self, after_call: bool = False) -> None:
        """Check who answers; a failed dial is left to the gRPC call's own diagnosis, but a
        reply is never used until the check has passed."""
        if self._server_checked or self._check_server is None:
            return
        try:
            self._check_server()
        except OSError as exc:
            if after_call:
                raise AggregatorUnavailable(
                    f"aggregator at {self._target}: cannot check its certificate: {exc}"
                ) from None
            return
        except BastionError as exc:
            raise AggregatorMisconfigured(str(exc)) from None
        self._server_checked = True

    def _planned(self, name: str, kind: str) -> TaskSpec:
        assert self._plan_tasks is not None
        task = self._plan_tasks.get(name)
        if task is None:
            raise AggregatorMisconfigured(
                f"the aggregator assigned task {name!r}, which the signed plan does not define"
            )
        return task

    def _reload_tls(self) -> None:
        """Dial with the renewed certificate when its files changed (no restart needed)."""
        if self._tls_files is None:
            return
        stamp = _stamp(self._tls_files)
        if stamp == self._tls_stamp:
            return
        try:
            tls = self._tls_files.read()
        except (BastionError, OSError, ValueError):
            return  # half-written: try again at the next request
        self._tls_stamp = stamp
        self._channel.close()
        self._channel = grpc.secure_channel(
            self._target, channel_credentials(*tls), options=self._options
        )
        self._stub = pb_grpc.FederationStub(self._channel)

    def get_tasks(self) -> Assignment:
        self._reload_tls()
        self._verify_server()
        try:
            reply, call = self._stub.GetTasks.with_call(
                pb.TasksRequest(
                    plan_hash=self._plan_hash, workspace_measurement=self._workspace_measurement
                ),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.RpcError as exc:
            error = self._translate(exc, "the task request")
            if isinstance(error, AggregatorUnavailable) and self._check_server is not None:
                self._server_checked = False  # whoever answers next is checked again
            raise error from None
        self._verify_server(after_call=True)
        receipts = tuple(
            bytes(value)
            for key, value in (call.trailing_metadata() or ())
            if key == RECEIPT_HEADER and isinstance(value, bytes)
        )
        self._keep_receipts(receipts)
        if self._plan_tasks is not None:
            tasks = tuple(self._planned(t.name, t.kind) for t in reply.tasks)
        else:
            tasks = tuple(
                TaskSpec(
                    name=t.name, kind=t.kind, model=t.model, args=json.loads(t.args_json or "{}")
                )
                for t in reply.tasks
            )
        return Assignment(
            _ACTIONS.get(reply.action, "wait"),  # type: ignore[arg-type]
            reply.round,
            tasks,
            reply.retry_after_seconds or 0.5,
            reply.total_rounds,
            receipts,
        )

    def _keep_receipts(self, receipts: tuple[bytes, ...]) -> None:
        """Store each signed receipt as ``receipts_dir/<record number>.json`` (to check
        against the audit log with `bastion audit verify LOG --receipt FILE`)."""
        if self._receipts_dir is None or not receipts:
            return
        self._receipts_dir.mkdir(parents=True, exist_ok=True)
        for receipt in receipts[:1000]:
            try:
                seq = int(json.loads(receipt)["seq"])
            except (ValueError, KeyError, TypeError):
                continue
            (self._receipts_dir / f"{seq:08d}.json").write_bytes(receipt + b"\n")

    def get_model(self, round_number: int) -> Weights:
        try:
            # Each chunk's payload stays where it arrived until it is copied into place.
            receive = self._channel.unary_stream(
                GET_MODEL,
                request_serializer=pb.ModelRequest.SerializeToString,
                response_deserializer=decode_model_chunk,
            )
            frames = receive(
                pb.ModelRequest(round=round_number), metadata=self._metadata, timeout=self._timeout
            )
            return assemble_frames(frames, self._max_model_bytes, buffers=self._received)
        except grpc.RpcError as exc:
            raise self._translate(exc, f"the model of round {round_number}") from None

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]:
        def messages() -> Iterator[pb.ResultChunk | bytes]:
            header = pb.ResultHeader(
                round=round_number, task=task, example_count=example_count, metrics=metrics
            )
            yield pb.ResultChunk(header=header)
            if weights:
                # Encoded from views of the arrays: one copy of each byte (transport/encoded.py).
                chunk = self._chunking.for_weights(weights)
                for frame in iter_frames(weights, chunk, lend=True):
                    yield encode_result_chunk(frame)

        try:
            send = self._channel.stream_unary(
                SEND_RESULT, request_serializer=passthrough, response_deserializer=ResultAck
            )
            ack = send(messages(), metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise self._translate(exc, f"the {task!r} result of round {round_number}") from None
        return ack.accepted, ack.reason

    def decline_task(
        self, round_number: int, task: str, reason: str, metrics: Mapping[str, float]
    ) -> tuple[bool, str]:
        """Tell the aggregator we will not run ``task`` (our local DP budget), so it stops waiting."""
        header = pb.ResultHeader(
            round=round_number, task=task, metrics=dict(metrics), declined=reason
        )
        try:
            ack = self._stub.SendResult(
                iter([pb.ResultChunk(header=header)]), metadata=self._metadata, timeout=60
            )
        except grpc.RpcError as exc:
            raise self._translate(exc, f"declining {task!r} in round {round_number}") from None
        return ack.accepted, ack.reason

    def fail_task(self, round_number: int, task: str, error: str) -> tuple[bool, str]:
        """Tell the aggregator our task raised (type and message only), so it stops waiting."""
        header = pb.ResultHeader(round=round_number, task=task, failed=error[:1000])
        try:
            ack = self._stub.SendResult(
                iter([pb.ResultChunk(header=header)]), metadata=self._metadata, timeout=60
            )
        except grpc.RpcError as exc:
            raise self._translate(exc, f"reporting the failure of {task!r}") from None
        return ack.accepted, ack.reason

    def heartbeat(self, round_number: int) -> int:
        """Tell the aggregator we are alive (a long task runs); returns its current round."""
        try:
            reply = self._stub.Heartbeat(
                pb.HeartbeatRequest(round=round_number), metadata=self._metadata, timeout=30
            )
        except grpc.RpcError as exc:
            raise self._translate(exc, "a heartbeat") from None
        return int(reply.round)

    def secagg_send(
        self,
        round_number: int,
        attempt: int,
        step: Step,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> tuple[bool, str]:
        """Send our secure aggregation message of ``step``, in chunks."""
        chunk = self._chunking.for_bytes(len(payload))
        parts = send_parts(round_number, attempt, step, payload, metrics, chunk)
        try:
            ack = self._stub.SecAggSend(parts, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise self._translate(exc, f"our secure aggregation {step.value} message") from None
        return ack.accepted, ack.reason

    def secagg_fetch(self, round_number: int, attempt: int, step: Step) -> StageReply:
        """Poll for the aggregator's answer that closes ``step``."""
        poll = pb.SecAggPoll(round=round_number, attempt=attempt, step=step.value)
        try:
            stream = self._stub.SecAggFetch(poll, metadata=self._metadata, timeout=self._timeout)
            return read_reply(stream, self._max_model_bytes)
        except grpc.RpcError as exc:
            raise self._translate(exc, f"the secure aggregation {step.value} answer") from None

    def attest_aggregator(self, nonce: bytes) -> pb.AggregatorEvidence:
        """Ask the aggregator for evidence over our fresh ``nonce``."""
        try:
            return self._stub.AttestAggregator(
                pb.AggregatorChallenge(nonce=nonce), metadata=self._metadata, timeout=60
            )
        except grpc.RpcError as exc:
            raise self._translate(exc, "the attestation challenge") from None

    def attest_collaborator(self, kind: str, quote: bytes, nonce: bytes) -> tuple[bool, str]:
        """Send our evidence over the aggregator's ``nonce``."""
        try:
            ack = self._stub.AttestCollaborator(
                pb.CollaboratorEvidence(kind=kind, quote=quote, nonce=nonce),
                metadata=self._metadata,
                timeout=60,
            )
        except grpc.RpcError as exc:
            raise self._translate(exc, "our attestation evidence") from None
        return ack.accepted, ack.reason


def _stamp(files: TLSFiles) -> tuple[int, ...]:
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (files.cert, files.key))


def _short(details: str) -> str:
    """gRPC's own text without its C-core file names and error codes."""
    first = details.strip().splitlines()[0] if details.strip() else "no details"
    return first.split(": ")[0] if "ssl_transport_security" in first or "TSI_" in first else first
