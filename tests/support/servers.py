"""An aggregator served over real gRPC (mTLS) inside the test process, on an ephemeral port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.service import build_aggregator
from bastion.pki import tls_files_for
from bastion.plan import Plan, load_plan
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.identity import (
    certificate_identity,
    channel_credentials,
    insecure_identity,
    server_credentials,
)
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
        self, name: str, pki_dir: Path | None = None
    ) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
        """A real mTLS channel presenting ``name``'s certificate from ``pki_dir``."""
        files = tls_files_for(pki_dir or self.workspace / "pki", name)
        channel = grpc.secure_channel(self.target, channel_credentials(*files.read()))
        return channel, pb_grpc.FederationStub(channel)


@contextmanager
def served_aggregator(workspace: Path, insecure: bool = False) -> Iterator[ServedAggregator]:
    plan = load_plan(workspace)
    aggregator = build_aggregator(plan, workspace)
    if insecure:
        credentials, identify = None, insecure_identity
    else:
        files = tls_files_for(workspace / "pki", "aggregator")
        credentials, identify = server_credentials(*files.read()), certificate_identity
    server = start_server(
        aggregator,
        plan.canonical_hash(),
        "127.0.0.1",
        0,
        credentials,
        identify,
        chunk_bytes=1 << 20,
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
