"""A collaborator works only for the aggregator its signed plan names, and only on the
plan's own task definitions (issue 15, M4), over real mTLS."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.servers import served_aggregator
from support.workspaces import make_workspace

from bastion.collaborator.service import run_collaborator
from bastion.errors import BastionError
from bastion.pki import Role, issue, tls_files_for
from bastion.protocol import Assignment
from bastion.transport.client import GrpcAggregatorClient


def test_rogue_aggregator_certificate_of_the_same_ca_is_refused(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2, rounds=1)
    issue(workspace / "pki", "rogue", Role.AGGREGATOR, hosts=["127.0.0.1", "localhost"])
    with served_aggregator(workspace, server_name="rogue") as served:
        with pytest.raises(BastionError) as caught:
            run_collaborator(workspace, "site-1", aggregator=served.target)
        assert served.aggregator.current_round == 1
        assert not served.aggregator.store.read_summary()["collaborators_seen"]
    message = str(caught.value)
    assert "signed plan names aggregator 'aggregator'" in message and "rogue" in message
    assert "\n" not in message


def test_task_arguments_come_from_the_signed_plan(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=2, rounds=1)
    with served_aggregator(workspace) as served:
        honest = served.aggregator.get_tasks

        def rogue_tasks(collaborator: str) -> Assignment:
            reply = honest(collaborator)
            hostile = tuple(
                t.model_copy(update={"args": {**t.args, "lr": 1e6}}) for t in reply.tasks
            )
            return dataclasses.replace(reply, tasks=hostile)

        served.aggregator.get_tasks = rogue_tasks  # type: ignore[method-assign]
        files = tls_files_for(workspace / "pki", "site-1")
        plan = served.plan
        client = GrpcAggregatorClient(
            served.target,
            plan.canonical_hash(),
            plan.network.chunking,
            plan.network.max_update_bytes,
            files.read(),
            plan_tasks={t.name: t for t in plan.tasks},
        )
        try:
            assignment = client.get_tasks()
        finally:
            client.close()
    train = next(t for t in assignment.tasks if t.kind == "train")
    assert train.args["lr"] == 0.2  # the plan's, not the reply's 1e6


def test_a_revoked_aggregator_certificate_is_refused(tmp_path: Path) -> None:
    from bastion.pki.revocation import revoke

    workspace = make_workspace(tmp_path, collaborators=2, rounds=1)
    revoke(workspace / "pki", "aggregator", "key-compromise")
    with served_aggregator(workspace) as served:
        with pytest.raises(BastionError) as caught:
            run_collaborator(workspace, "site-1", aggregator=served.target)
        assert not served.aggregator.store.read_summary()["collaborators_seen"]
    assert "revoked (key-compromise)" in str(caught.value)
