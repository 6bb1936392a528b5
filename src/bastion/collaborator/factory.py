"""Wiring one collaborator from its plan: the one place a ``Collaborator`` is put together.

The gRPC service (``run_collaborator``), the in-process simulation and the Ray workers
differ only in the transport, the runner and data they bring, which errors they retry,
and the state they keep between rounds (secure aggregation standing, compression
encoder, local DP ledger); everything the plan decides is decided here.
"""

from __future__ import annotations

from collections.abc import Callable

from bastion.collaborator.local_privacy import site_privacy
from bastion.collaborator.loop import (
    AggregatorClient,
    Collaborator,
    TaskObserver,
    ignore_task,
    no_attestation,
)
from bastion.collaborator.secure_update import SecureAggregation
from bastion.collaborator.update_path import SendCompressed, SendSecurely, SendWeights, UpdatePath
from bastion.compression.downstream import Downlink
from bastion.compression.wire import UpdateEncoder
from bastion.data.types import DataShard
from bastion.errors import PlanError
from bastion.plan import Plan
from bastion.privacy.dp.site_ledger import SiteLedger
from bastion.runners.base import TaskRunner


def build_collaborator(
    plan: Plan,
    name: str,
    client: AggregatorClient,
    runner: TaskRunner,
    data: DataShard,
    *,
    retryable: tuple[type[Exception], ...] = (),
    attest: Callable[[], None] = no_attestation,
    secure: SecureAggregation | None = None,
    ledger: SiteLedger | None = None,
    encoder: UpdateEncoder | None = None,
    on_task: TaskObserver = ignore_task,
    heartbeat: bool = False,
) -> Collaborator:
    """A collaborator ``name`` of ``plan`` that talks through ``client``.

    ``secure`` is the site's standing for secure aggregation (its signing identity and the
    session attempts it joined), required when the plan turns it on; ``ledger`` is where
    local DP's spend persists (none: kept in memory); ``encoder`` is a compression encoder
    to reuse, with its error-feedback residual (none: a fresh one when the plan compresses).
    ``heartbeat`` tells the aggregator we live while long tasks run (over a network).
    Call it after a shared runner took on this client's state: local DP reads its history.
    """
    return Collaborator(
        name,
        client,
        runner,
        data,
        retryable=retryable,
        give_up_seconds=plan.timeouts.reconnect_give_up_seconds,
        on_task=on_task,
        attest=attest,
        update_path=choose_update_path(plan, name, client, secure, encoder, retryable),
        privacy=site_privacy(plan, name, runner, ledger),
        heartbeat_seconds=heartbeat_interval(plan) if heartbeat else None,
        downlink=Downlink.for_spec(plan.compression),
    )


def heartbeat_interval(plan: Plan) -> float:
    """Often enough that a busy site is never mistaken for a lost one."""
    return max(1.0, min(30.0, plan.timeouts.lost_seconds / 4))


def choose_update_path(
    plan: Plan,
    name: str,
    client: AggregatorClient,
    secure: SecureAggregation | None,
    encoder: UpdateEncoder | None,
    retryable: tuple[type[Exception], ...],
) -> UpdatePath:
    """How this site's training results leave it under ``plan`` (see ``update_path``)."""
    if encoder is None and plan.compression is not None:
        encoder = UpdateEncoder(plan.compression)
    if plan.uses_secure_aggregation:
        if secure is None:
            raise PlanError(
                f"{name}: the plan turns secure_aggregation on, but this collaborator was given "
                "no signing identity for it"
            )
        return SendSecurely(name, secure, client, encoder, retryable)
    if encoder is not None:
        return SendCompressed(client, encoder)
    return SendWeights(client)
