"""The federation service's wire: the director's gRPC methods and a mutual-TLS client.

Messages are small JSON objects (never pickle) and workspace archives or checkpoints travel
as raw byte chunks; there is no generated code, so the director (``bastion.director``),
the site agents (``bastion.site``) and the Python API share this one definition of the
service. Who calls is always the verified client certificate, never a field of a message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bastion.errors import BastionError
from bastion.pki import Role, identity_of
from bastion.pki.pem import parse_certificate
from bastion.transport.identity import channel_credentials

SERVICE = "bastion.director.Director"
CHUNK_BYTES = 1 << 20
MAX_JSON_BYTES = 4 << 20

#: unary methods: JSON in, JSON out
UNARY = (
    "Register",  # site: what it offers
    "Heartbeat",  # site: alive; answers the jobs addressed to it
    "Decide",  # site: accept or reject a job
    "Sites",  # anyone: the registry
    "ListJobs",  # owner: their jobs; site: jobs addressed to it
    "JobStatus",
    "StopJob",
)
#: client streaming: a JSON header message, then raw chunks; JSON out
UPLOAD = ("Submit",)
#: server streaming of raw chunks
DOWNLOAD = ("FetchWorkspace", "Download")
#: server streaming of JSON messages
FOLLOW = ("Rounds", "Logs")


class DirectorError(BastionError):
    """The director refused a request; the message is its one-line reason."""


class DirectorUnavailable(DirectorError):
    """Nothing answers at the director's address (not started, or restarting)."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode()


def decode(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_JSON_BYTES:
        raise BastionError(f"a service message of {len(raw)} bytes is over the limit")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BastionError(f"malformed service message: {exc}") from None
    if not isinstance(value, dict):
        raise BastionError("malformed service message: not a JSON object")
    return value


def caller(context: grpc.ServicerContext) -> tuple[str, Role]:
    """The name and role in the caller's verified client certificate."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        raise BastionError("the peer presented no client certificate")
    identity = identity_of(parse_certificate(pem[0], source="peer certificate"))
    return identity.name, identity.role


def _identity(raw: bytes) -> bytes:
    return raw


class DirectorClient:
    """A mutual-TLS connection to a director, as a site agent or a model owner."""

    def __init__(self, target: str, tls: tuple[bytes, bytes, bytes], timeout: float = 30.0):
        self.target = target
        self.timeout = timeout
        self._channel = grpc.secure_channel(
            target,
            channel_credentials(*tls),
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )

    def close(self) -> None:
        self._channel.close()

    def _path(self, method: str) -> str:
        return f"/{SERVICE}/{method}"

    def call(self, method: str, message: dict[str, Any] | None = None) -> dict[str, Any]:
        stub = self._channel.unary_unary(
            self._path(method), request_serializer=_identity, response_deserializer=_identity
        )
        with _errors(self.target):
            return decode(stub(encode(message or {}), timeout=self.timeout))

    def upload(self, method: str, header: dict[str, Any], path: Path) -> dict[str, Any]:
        def chunks() -> Iterator[bytes]:
            yield encode(header)
            with Path(path).open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield chunk

        stub = self._channel.stream_unary(
            self._path(method), request_serializer=_identity, response_deserializer=_identity
        )
        with _errors(self.target):
            return decode(stub(chunks(), timeout=max(self.timeout, 600.0)))

    def download(self, method: str, message: dict[str, Any], out: Path) -> Path:
        """Stream raw chunks into ``out`` (written whole or not at all)."""
        from bastion.storage.atomic import atomic_writer

        stub = self._channel.unary_stream(
            self._path(method), request_serializer=_identity, response_deserializer=_identity
        )
        with _errors(self.target), atomic_writer(Path(out)) as handle:
            for chunk in stub(encode(message), timeout=max(self.timeout, 600.0)):
                handle.write(chunk)
        return Path(out)

    def follow(
        self, method: str, message: dict[str, Any], timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        stub = self._channel.unary_stream(
            self._path(method), request_serializer=_identity, response_deserializer=_identity
        )
        with _errors(self.target):
            for raw in stub(encode(message), timeout=timeout):
                yield decode(raw)


@contextmanager
def _errors(target: str) -> Iterator[None]:
    """gRPC failures as one-line ``DirectorError``s."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code is grpc.StatusCode.UNAVAILABLE:
            raise DirectorUnavailable(
                f"the director at {target} is unavailable ({details})"
            ) from None
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DirectorUnavailable(f"the director at {target} did not answer in time") from None
        raise DirectorError(details or str(code)) from None
