"""Secure aggregation messages on the gRPC wire: a header, then the payload in chunks.

Payloads of any size (a masked model is as large as the model) fit gRPC's per-message
limit this way. The header announces the payload's length, which the receiver checks
against its limit before it reads a byte, and the parts must add up to exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from bastion.errors import ProtocolError
from bastion.privacy.secagg.session import Step
from bastion.protocol import StageReply
from bastion.transport import bastion_pb2 as pb


def payload_parts(
    header: pb.SecAggHeader, payload: bytes, chunk_bytes: int
) -> Iterator[pb.SecAggPart]:
    """The header (with ``total_bytes`` set), then the payload cut into chunks."""
    header.total_bytes = len(payload)
    yield pb.SecAggPart(header=header)
    view = memoryview(payload)
    for start in range(0, len(payload), chunk_bytes):
        yield pb.SecAggPart(data=bytes(view[start : start + chunk_bytes]))


def send_parts(
    round_number: int,
    attempt: int,
    step: Step,
    payload: bytes,
    metrics: Mapping[str, float],
    chunk_bytes: int,
) -> Iterator[pb.SecAggPart]:
    header = pb.SecAggHeader(round=round_number, attempt=attempt, step=step.value, metrics=metrics)
    return payload_parts(header, payload, chunk_bytes)


def reply_parts(reply: StageReply, chunk_bytes: int) -> Iterator[pb.SecAggPart]:
    header = pb.SecAggHeader(
        status=reply.status, retry_after_seconds=reply.retry_after, reason=reply.reason
    )
    return payload_parts(header, reply.payload, chunk_bytes)


def first_header(parts: Iterator[pb.SecAggPart]) -> pb.SecAggHeader:
    first = next(parts, None)
    if first is None or first.WhichOneof("part") != "header":
        raise ProtocolError("a secure aggregation message must start with its header")
    return first.header


def read_payload(parts: Iterable[pb.SecAggPart], expected: int, limit: int) -> bytes:
    """Exactly ``expected`` bytes from the data parts, refused up front beyond ``limit``."""
    if expected > limit:
        raise ProtocolError(
            f"a secure aggregation message of {expected} bytes exceeds the limit of {limit}"
        )
    buffer = bytearray()
    for part in parts:
        if part.WhichOneof("part") != "data":
            raise ProtocolError("a secure aggregation message carries exactly one header, first")
        if len(buffer) + len(part.data) > expected:
            raise ProtocolError("a secure aggregation message is longer than its header says")
        buffer += part.data
    if len(buffer) != expected:
        raise ProtocolError(
            f"a secure aggregation message ended after {len(buffer)} of {expected} bytes"
        )
    return bytes(buffer)


def read_reply(parts: Iterator[pb.SecAggPart], limit: int) -> StageReply:
    """The aggregator's answer to a poll, from its streamed parts."""
    header = first_header(parts)
    if header.status not in ("ready", "wait", "aborted"):
        raise ProtocolError(f"unknown secure aggregation status {header.status[:20]!r}")
    payload = read_payload(parts, header.total_bytes, limit)
    return StageReply(
        header.status,  # type: ignore[arg-type]
        payload,
        max(0.05, min(header.retry_after_seconds or 0.5, 60.0)),
        header.reason[:2000],
    )
