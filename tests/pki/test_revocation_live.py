"""Revocation and renewal in a running federation, over real mTLS (issue 15, M5)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from support.cli import run_bastion
from support.servers import served_aggregator
from support.workspaces import make_workspace

from bastion.pki import load_certificate, tls_files_for
from bastion.spec.network import parse_address
from bastion.transport import bastion_pb2 as pb
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.client import AggregatorRefused, GrpcAggregatorClient
from bastion.transport.identity import channel_credentials
from bastion.transport.peer_check import server_certificate

SITES = ("site-1", "site-2", "site-3")
PLAN = {"tasks": [{"name": "train", "kind": "train"}], "timeouts": {"round_seconds": 4}}


def _client(served, name: str) -> GrpcAggregatorClient:  # type: ignore[no-untyped-def]
    files = tls_files_for(served.workspace / "pki", name)
    plan = served.plan
    return GrpcAggregatorClient(
        served.target,
        plan.canonical_hash(),
        plan.network.chunking,
        plan.network.max_update_bytes,
        files.read(),
        plan_tasks={t.name: t for t in plan.tasks},
        tls_files=files,
    )


def _work(client: GrpcAggregatorClient, round_number: int) -> bool:
    model = client.get_model(round_number)
    accepted, reason = client.send_result(
        round_number, "train", 100, {}, {k: v + 1.0 for k, v in model.items()}
    )
    assert accepted, reason
    return accepted


def _wait_round(served, number: int, limit: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while served.aggregator.current_round < number and not served.aggregator.finished.is_set():
        assert time.monotonic() < deadline, "the round did not close"
        time.sleep(0.05)


def test_revoke_mid_federation_and_renew_without_restart(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=3, rounds=2, plan_changes=PLAN)
    pki = workspace / "pki"
    with served_aggregator(workspace, revocation=True) as served:
        clients = {name: _client(served, name) for name in SITES}
        for client in clients.values():
            assert client.get_tasks().action == "run"
        _work(clients["site-1"], 1)
        _work(clients["site-2"], 1)

        revoked = run_bastion(
            "pki", "revoke", "site-3", "--reason", "key-compromise", "--pki-dir", str(pki)
        )
        assert revoked.returncode == 0, revoked.stderr
        # Refused within one CRL reload (the aggregator looks every 0.2 s).
        started = time.monotonic()
        with pytest.raises(AggregatorRefused, match="revoked \\(key-compromise\\)"):
            while True:
                clients["site-3"].get_tasks()
                assert time.monotonic() - started < 2.0, "still accepted after a reload"
                time.sleep(0.05)
        _wait_round(served, 2)  # round 1 closes with the other two (site-3 timed out)

        old_site2 = tls_files_for(pki, "site-2").read()
        old_aggregator = load_certificate(pki / "aggregator.crt").serial_number
        for name in ("site-2", "aggregator"):
            renewed = run_bastion("pki", "renew", name, "--pki-dir", str(pki))
            assert renewed.returncode == 0, renewed.stderr
        # The aggregator serves its renewed certificate at the next handshake, no restart.
        address = parse_address(served.target, 0)
        files = tls_files_for(pki, "site-1")
        served_now = server_certificate(address, files.ca.read_bytes(), files.cert, files.key)
        assert served_now.serial_number != old_aggregator
        assert served_now.serial_number == load_certificate(pki / "aggregator.crt").serial_number
        # site-2's superseded certificate no longer works; its running client redials with
        # the renewed one and goes on.
        time.sleep(0.3)
        stale = grpc.secure_channel(served.target, channel_credentials(*old_site2))
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.FederationStub(stale).GetTasks(
                pb.TasksRequest(plan_hash=served.plan.canonical_hash()), timeout=10
            )
        stale.close()
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "superseded" in caught.value.details()
        for name in ("site-1", "site-2"):
            assignment = clients[name].get_tasks()
            assert assignment.action == "run" and assignment.round == 2
            _work(clients[name], 2)
        assert served.aggregator.finished.wait(30) or served.aggregator.current_round >= 3
        summary = served.aggregator.store.read_summary()
        for client in clients.values():
            client.close()
    assert summary is not None
    list_out = run_bastion("pki", "list", "--pki-dir", str(pki))
    assert "revoked (key-compromise)" in list_out.stdout
    assert "revoked (superseded)" in list_out.stdout
