"""An aggregator served over real gRPC (mTLS) inside the test process, on an ephemeral port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.service import build_aggregator
from bastion.pki import tls_files_for
from bastion.pki.revocation import CrlWatch, crl_path
from bastion.plan import Plan, load_plan
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.identity import (
    certificate_identity,
    channel_credentials,
    insecure_identity,
    reloading_server_credentials,
    revocation_checked,
    server_credentials,
)
from bastion.transport.limits import PLAN_HEADER, StreamLimits
from bastion.transport.server import RunningServer, start_server


@dataclass
class ServedAggregator:
    plan: Plan
    aggregator: Aggregator
    server: RunningServer
    workspace: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stub(
        self, name: str, pki_dir: Path | None = None, plan_headers: bool = True
    ) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
        """A real mTLS channel presenting ``name``'s certificate from ``pki_dir``; each call
        carries the plan's hash in its metadata as ``GrpcAggregatorClient`` sends it."""
        files = tls_files_for(pki_dir or self.workspace / "pki", name)
        channel = grpc.secure_channel(self.target, channel_credentials(*files.read()))
        if plan_headers:
            headers = ((PLAN_HEADER, self.plan.canonical_hash()),)
            channel = grpc.intercept_channel(channel, PlanHeaders(headers))
        return channel, pb_grpc.FederationStub(channel)


class PlanHeaders(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds metadata to every call of a channel."""

    def __init__(self, headers: tuple[tuple[str, str], ...]) -> None:
        self._headers = headers

    def _with(self, details: Any) -> Any:
        metadata = (*(details.metadata or ()), *self._headers)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with(details), requests)


@contextmanager
def served_aggregator(
    workspace: Path,
    insecure: bool = False,
    limits: StreamLimits | None = None,
    chunk_bytes: int = 1 << 20,
    server_name: str = "aggregator",
    revocation: bool = False,
) -> Iterator[ServedAggregator]:
    plan = load_plan(workspace)
    aggregator = build_aggregator(plan, workspace)
    if insecure:
        credentials, identify = None, insecure_identity
    else:
        files = tls_files_for(workspace / "pki", server_name)
        credentials, identify = server_credentials(*files.read()), certificate_identity
        if revocation:  # as `bastion aggregator start`: CRL-checked, renewable certificate
            credentials = reloading_server_credentials(files)
            crl = CrlWatch(crl_path(workspace / "pki"), workspace / "pki" / "ca.crt", 0.2)
            identify = revocation_checked(certificate_identity, crl)
    server = start_server(
        aggregator,
        plan.canonical_hash(),
        "127.0.0.1",
        0,
        credentials,
        identify,
        chunk_bytes=chunk_bytes,
        limits=limits,
        max_receive_bytes=aggregator.max_update_bytes,
    )
    stop = threading.Event()
    watchdog = threading.Thread(
        target=lambda: [aggregator.check_timeout() for _ in iter(lambda: stop.wait(0.2), True)]
    )
    watchdog.start()
    try:
        yield ServedAggregator(plan, aggregator, server, workspace)
    finally:
        stop.set()
        watchdog.join()
        server.stop(grace=0.1)
