"""Security at the transport edge, each over a real TLS connection on 127.0.0.1."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from support.servers import served_aggregator
from support.workspaces import edit_plan, make_workspace

from bastion.pki import Role, init_ca, issue, tls_files_for
from bastion.transport import bastion_pb2 as pb
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.identity import channel_credentials
from bastion.workspace.initialize import initialize_plan


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, collaborators=3, rounds=2)


def _tasks(stub: pb_grpc.FederationStub, plan_hash: str, **kwargs: object) -> pb.TasksReply:
    return stub.GetTasks(pb.TasksRequest(plan_hash=plan_hash), timeout=10, **kwargs)


def _second_pki(tmp_path: Path, workspace: Path, same_ca: bool) -> Path:
    """A PKI folder for a rogue identity: a copy of the federation's CA, or a new CA."""
    other = tmp_path / ("same-ca" if same_ca else "other-ca")
    other.mkdir()
    if same_ca:
        for name in ("ca.crt", "ca.key"):
            shutil.copy2(workspace / "pki" / name, other / name)
    else:
        init_ca(other, common_name="Some Other CA")
    return other


def test_plain_text_client_is_refused(workspace: Path) -> None:
    with served_aggregator(workspace) as served:
        channel = grpc.insecure_channel(served.target)
        stub = pb_grpc.FederationStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            _tasks(
                stub, served.plan.canonical_hash(), metadata=(("x-bastion-collaborator", "site-1"),)
            )
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert served.aggregator.current_round == 1
        assert not served.aggregator.store.read_summary()["collaborators_seen"]
        channel.close()


def test_certificate_from_another_ca_is_refused(workspace: Path, tmp_path: Path) -> None:
    rogue = _second_pki(tmp_path, workspace, same_ca=False)
    issue(rogue, "site-1", Role.COLLABORATOR)
    with served_aggregator(workspace) as served:
        # The rogue client trusts the real CA (so it can reach the server) but presents a foreign cert.
        files = tls_files_for(rogue, "site-1")
        ca = (workspace / "pki" / "ca.crt").read_bytes()
        _, cert, key = files.read()
        channel = grpc.secure_channel(served.target, channel_credentials(ca, cert, key))
        with pytest.raises(grpc.RpcError) as caught:
            _tasks(pb_grpc.FederationStub(channel), served.plan.canonical_hash())
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert not served.aggregator.store.read_summary()["collaborators_seen"]
        channel.close()


def test_expired_certificate_is_refused(workspace: Path, tmp_path: Path) -> None:
    same_ca = _second_pki(tmp_path, workspace, same_ca=True)
    long_ago = datetime.now(timezone.utc) - timedelta(days=30)
    issue(same_ca, "site-1", Role.COLLABORATOR, days=2, not_before=long_ago)
    with served_aggregator(workspace) as served:
        channel, stub = served.stub("site-1", pki_dir=same_ca)
        with pytest.raises(grpc.RpcError) as caught:
            _tasks(stub, served.plan.canonical_hash())
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert not served.aggregator.store.read_summary()["collaborators_seen"]
        channel.close()


def test_valid_certificate_not_on_roster_is_refused(workspace: Path) -> None:
    issue(workspace / "pki", "mallory", Role.COLLABORATOR)
    with served_aggregator(workspace) as served:
        channel, stub = served.stub("mallory")
        with pytest.raises(grpc.RpcError) as caught:
            _tasks(stub, served.plan.canonical_hash())
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "not on the plan's roster" in caught.value.details()
        with pytest.raises(grpc.RpcError) as model_call:
            list(stub.GetModel(pb.ModelRequest(round=1), timeout=10))
        assert model_call.value.code() is grpc.StatusCode.PERMISSION_DENIED
        channel.close()


def test_aggregator_certificate_cannot_act_as_collaborator(workspace: Path) -> None:
    with served_aggregator(workspace) as served:
        channel, stub = served.stub("aggregator")
        with pytest.raises(grpc.RpcError) as caught:
            _tasks(stub, served.plan.canonical_hash())
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "only collaborators" in caught.value.details()
        channel.close()


def _validation_result(round_number: int, task: str) -> list[pb.ResultChunk]:
    header = pb.ResultHeader(
        round=round_number, task=task, example_count=10, metrics={"accuracy": 0.5}
    )
    return [pb.ResultChunk(header=header)]


def test_collaborator_cannot_submit_as_another(workspace: Path) -> None:
    with served_aggregator(workspace) as served:
        plan_hash = served.plan.canonical_hash()
        channel_a, stub_a = served.stub("site-1")
        assert _tasks(stub_a, plan_hash).action == pb.TasksReply.RUN
        # site-1 claims to be site-2 in every way a request can: the header is ignored under TLS.
        claim = (("x-bastion-collaborator", "site-2"),)
        ack = stub_a.SendResult(
            iter(_validation_result(1, "validate_global")), metadata=claim, timeout=10
        )
        assert ack.accepted
        progress = served.aggregator._round
        assert progress is not None
        assert "validate_global" not in progress.pending["site-1"]
        assert progress.pending["site-2"][0] == "validate_global"  # site-2's slot is untouched
        records = progress.results["validate_global"]
        assert [r.collaborator for r in records] == ["site-1"]
        # A second try lands on site-1's own, already used slot.
        with pytest.raises(grpc.RpcError) as caught:
            stub_a.SendResult(
                iter(_validation_result(1, "validate_global")), metadata=claim, timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "site-1 already sent" in caught.value.details()
        channel_a.close()


def test_collaborator_cannot_fetch_unassigned_round_or_model(workspace: Path) -> None:
    # One of three collaborators per round (ceil(0.3 * 3) = 1, seeded), so two sit out round 1.
    edit_plan(workspace, {"participation": {"fraction": 0.3, "min_collaborators": 1, "seed": 7}})
    initialize_plan(workspace, force=True)
    with served_aggregator(workspace) as served:
        plan_hash = served.plan.canonical_hash()
        assigned = sorted(served.aggregator._round.pending)  # type: ignore[union-attr]
        assert len(assigned) == 1
        outsider = next(n for n in ("site-1", "site-2", "site-3") if n not in assigned)
        channel, stub = served.stub(outsider)
        assert _tasks(stub, plan_hash).action == pb.TasksReply.WAIT
        with pytest.raises(grpc.RpcError) as model_call:
            list(stub.GetModel(pb.ModelRequest(round=1), timeout=10))
        assert model_call.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as result_call:
            stub.SendResult(iter(_validation_result(1, "validate_global")), timeout=10)
        assert result_call.value.code() is grpc.StatusCode.PERMISSION_DENIED
        channel.close()

        insider_channel, insider = served.stub(assigned[0])
        for wrong_round in (0, 2, 7):
            with pytest.raises(grpc.RpcError) as wrong:
                list(insider.GetModel(pb.ModelRequest(round=wrong_round), timeout=10))
            assert wrong.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "current round is 1" in wrong.value.details()
        chunks = list(insider.GetModel(pb.ModelRequest(round=1), timeout=10))
        assert {c.name for c in chunks} == {"w", "b"}
        insider_channel.close()


def test_collaborator_with_a_different_plan_is_refused(workspace: Path) -> None:
    with served_aggregator(workspace) as served:
        channel, stub = served.stub("site-1")
        with pytest.raises(grpc.RpcError) as caught:
            _tasks(stub, "0" * 64)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "plan mismatch" in caught.value.details()
        channel.close()
