"""The plug-ins a plan asks for: its round protocol, its observers and its update decoding.

This is the one place that reads which mechanisms a plan turns on; the round engine is
handed what it returns and never asks again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bastion.aggregator.buffered_protocol import BufferedRounds
from bastion.aggregator.events import RoundObserver
from bastion.aggregator.local_privacy import LocalPrivacyTracker
from bastion.aggregator.observers import AttestationStatus, MetricsRecorder, SiteFailures
from bastion.aggregator.privacy_observers import CentralPrivacyObserver, LocalPrivacyObserver
from bastion.aggregator.round_protocol import ProtocolFactory, StreamingRound
from bastion.aggregator.secure_protocol import SECURE_ATTEMPTS_FILE, SecureAggregationRounds
from bastion.compression.pipeline import build_pipeline
from bastion.compression.wire import decode_update
from bastion.metrics.log import MetricsLog
from bastion.plan import Plan
from bastion.privacy.dp.ledger import PrivacyLedger
from bastion.privacy.secagg.keys import IdentityVerifier
from bastion.tensors import Weights

#: Turns a training result's payload into the update it stands for: (payload, model, round).
UpdateDecoder = Callable[[Weights, Weights, int], Weights]


def standard_observers(plan: Plan, metrics: MetricsLog) -> list[RoundObserver]:
    """The metrics log, attestation status and site failures always; DP ledgers with DP."""
    observers: list[RoundObserver] = [MetricsRecorder(metrics), AttestationStatus(), SiteFailures()]
    ledger = PrivacyLedger.for_plan(plan)
    if ledger is not None:
        observers.append(CentralPrivacyObserver(ledger))
    tracker = LocalPrivacyTracker.for_plan(plan)
    if tracker is not None:
        trains = {t.name for t in plan.tasks if t.kind == "train"}
        observers.append(LocalPrivacyObserver(tracker, trains))
    return observers


def standard_protocol(
    plan: Plan, verifier: IdentityVerifier | None = None, state_dir: Path | None = None
) -> ProtocolFactory:
    """Secure aggregation's sessions or buffered asynchronous versions when the plan turns
    them on (never both: the plan refuses it), else streaming rounds. ``state_dir`` (the
    checkpoints' folder) keeps what a protocol must remember across restarts."""
    if plan.asynchronous is not None and plan.asynchronous.enabled:
        return BufferedRounds(plan.asynchronous)
    if plan.uses_secure_aggregation:
        pipeline = build_pipeline(plan.compression) if plan.compression else None
        attempts = state_dir / SECURE_ATTEMPTS_FILE if state_dir is not None else None
        return SecureAggregationRounds(verifier, pipeline, attempts)
    return StreamingRound


def update_decoder(plan: Plan) -> UpdateDecoder:
    """Compressed payloads are deltas against the round's model; plain ones are the update."""
    if plan.compression is None:
        return lambda payload, model, round_number: payload
    pipeline = build_pipeline(plan.compression)
    return lambda payload, model, round_number: decode_update(
        pipeline, payload, model, round_number
    )
