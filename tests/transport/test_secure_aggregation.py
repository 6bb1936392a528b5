"""Secure aggregation over real gRPC with mutual TLS: a curious aggregator learns nothing about
one collaborator from what it receives, and one that substitutes keys or shows collaborators
different survivor sets is caught."""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from scipy.stats import chisquare
from support.servers import ServedAggregator, served_aggregator
from support.workspaces import make_workspace

from bastion.aggregator.secure_round import SecureRound
from bastion.collaborator.factory import build_collaborator
from bastion.collaborator.loop import Collaborator
from bastion.collaborator.secure_update import SecureAggregation
from bastion.framing import Chunking
from bastion.metrics.log import read_metrics
from bastion.pki import load_private_key, tls_files_for
from bastion.privacy.secagg.identity import identity_from_tls
from bastion.privacy.secagg.keys import RoundKeys, advertisement_payload, sign
from bastion.privacy.secagg.masking import self_mask
from bastion.privacy.secagg.messages import (
    KeyRoster,
    MaskedInput,
    SurvivorList,
    UnmaskingRequest,
    UnmaskingResponse,
)
from bastion.privacy.secagg.server import SecAggServer
from bastion.privacy.secagg.session import (
    SessionInfo,
    Step,
    quantizer_for,
    session_config,
)
from bastion.privacy.secagg.shamir import Share, combine
from bastion.privacy.secagg.update import UpdateCodec
from bastion.protocol import StageReply
from bastion.transport import bastion_pb2 as pb
from bastion.transport.client import AggregatorUnavailable, GrpcAggregatorClient
from bastion.transport.server import FederationServicer
from bastion.workspace.tasks import build_runner, load_shard

COLLABORATORS = 4
# Deadlines only matter when someone is missing; generous ones keep a busy machine from
# turning slowness into dropouts (a stage closes as soon as everyone has spoken).
PLAN = {
    "secure_aggregation": {"stage_seconds": 120},
    "timeouts": {"poll_seconds": 0.05, "round_seconds": 300},
}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, collaborators=COLLABORATORS, rounds=1, plan_changes=PLAN)


def _run_collaborators(served: ServedAggregator) -> dict[str, Collaborator]:
    """Every collaborator of the roster, dialling in over mTLS from its own thread."""
    plan, workspace = served.plan, served.workspace
    collaborators: dict[str, Collaborator] = {}
    for name in plan.collaborator_names():
        files = tls_files_for(workspace / "pki", name)
        client = GrpcAggregatorClient(
            served.target, plan.canonical_hash(), Chunking(1 << 20), 1 << 28, files.read()
        )
        collaborators[name] = build_collaborator(
            plan,
            name,
            client,
            build_runner(plan, workspace),
            load_shard(plan, name, workspace),
            retryable=(AggregatorUnavailable,),
            secure=SecureAggregation(plan, identity_from_tls(files)),
        )
    threads = [threading.Thread(target=c.run, daemon=True) for c in collaborators.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a collaborator did not finish"
    return collaborators


def _tap(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[Step, bytes]]:
    """Record, at the aggregator's gRPC edge, every secure aggregation message it receives."""
    received: dict[str, dict[Step, bytes]] = defaultdict(dict)
    original = FederationServicer.SecAggSend

    def recording(
        self: FederationServicer, parts: Iterator[pb.SecAggPart], context
    ) -> pb.SecAggAck:  # noqa: ANN001
        messages = list(parts)
        header = messages[0].header
        payload = b"".join(m.data for m in messages[1:])
        received[self._caller(context)][Step(header.step)] = payload
        return original(self, iter(messages), context)

    monkeypatch.setattr(FederationServicer, "SecAggSend", recording)
    return received


def _audit_invariant(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """After every unmasking response, check the server never holds both secrets of anyone."""
    audits: list[dict] = []
    original = SecAggServer.receive_unmasking

    def audited(self: SecAggServer, sender: str, message: UnmaskingResponse) -> None:
        original(self, sender, message)
        held = self.held_secrets()
        audits.append(held)
        for name, h in held.items():
            assert h.self_mask_shares == 0 or h.key_shares == 0, name

    monkeypatch.setattr(SecAggServer, "receive_unmasking", audited)
    return audits


def _uniform(data: bytes) -> float:
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    return float(chisquare(counts).pvalue)


def test_a_curious_aggregator_cannot_recover_one_collaborators_update(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = _tap(monkeypatch)
    audits = _audit_invariant(monkeypatch)
    with served_aggregator(workspace) as served:
        start = dict(served.aggregator.model)
        _run_collaborators(served)
        assert served.aggregator.finished.wait(60)
    plan = served.plan
    names = plan.collaborator_names()
    (session,) = [
        r
        for r in read_metrics(workspace / "logs" / "metrics.jsonl")
        if r["event"] == "secure_aggregation"
    ]
    assert session["outcome"] == "ok" and session["contributors"] == names
    assert audits, "the aggregator never audited an unmasking response"

    # Everything the aggregator received about site-1's update: its masked input...
    masked = {n: MaskedInput.from_bytes(received[n][Step.MASKED_INPUT]).vector for n in names}
    raw = b"".join(v.tobytes() for v in masked.values())
    assert _uniform(raw) > 1e-6  # uniform under the null: fails one run in a million
    # ...which looks nothing like what a plain quantized update looks like,
    info = SessionInfo(1, session["attempt"], tuple(names))
    codec = UpdateCodec(
        start, quantizer_for(plan.secure_aggregation, len(names), 1.0), "examples", 1e6
    )  # type: ignore[arg-type]
    plain, _ = codec.encode({k: np.zeros_like(v, np.float64) for k, v in start.items()}, 100.0)
    assert _uniform(plain.tobytes()) < 1e-12
    # ...and even minus the self-mask the aggregator may rebuild from the unmasking shares,
    # the pairwise masks still cover it: what is left is as uniform as before.
    config = session_config(
        plan.secure_aggregation,
        info.participants,
        1,
        info.attempt,
        codec.vector_length,
        plan.canonical_hash(),  # type: ignore[arg-type]
    )
    shares = [
        Share.from_bytes(
            UnmaskingResponse.from_bytes(received[n][Step.UNMASKING]).self_mask_shares["site-1"]
        )
        for n in names
    ]
    seed = combine(shares, config.threshold)
    remainder = masked["site-1"] - self_mask(config, seed)
    assert _uniform(remainder.tobytes()) > 1e-6
    # No train result ever travelled on its own.
    assert all(Step.MASKED_INPUT in received[n] for n in names)


class _Substitute:
    """An aggregator that swaps site-2's advertised keys in the roster it hands out."""

    def __init__(
        self, aggregator_key: ec.EllipticCurvePrivateKey, aggregator_pem: bytes, signed: bool
    ) -> None:
        self.key, self.pem, self.signed = aggregator_key, aggregator_pem, signed

    def __call__(self, original):  # noqa: ANN001, ANN204
        tamper = self

        def fetch(session: SecureRound, name: str, step: Step) -> StageReply:
            reply = original(session, name, step)
            if step is not Step.ADVERTISE_KEYS or reply.status != "ready":
                return reply
            roster = KeyRoster.from_bytes(reply.payload)
            fresh = RoundKeys.generate()
            swapped = []
            for entry in roster.keys:
                if entry.client == "site-2":
                    entry = dataclasses.replace(
                        entry, c_public=fresh.c_public, s_public=fresh.s_public
                    )
                    if tamper.signed:  # re-signed with the aggregator's own certificate key
                        payload = advertisement_payload(
                            session.server.config.session_id,
                            1,
                            "site-2",
                            fresh.c_public,
                            fresh.s_public,
                        )
                        entry = dataclasses.replace(
                            entry, signature=sign(tamper.key, payload), credential=tamper.pem
                        )
                swapped.append(entry)
            return dataclasses.replace(reply, payload=KeyRoster(tuple(swapped)).to_bytes())

        return fetch


@pytest.mark.parametrize("signed", [False, True], ids=["swapped", "re-signed-by-aggregator"])
def test_keys_substituted_by_the_aggregator_are_detected_and_the_round_aborted(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, signed: bool
) -> None:
    received = _tap(monkeypatch)
    pki = workspace / "pki"
    substitute = _Substitute(
        load_private_key(pki / "aggregator.key"), (pki / "aggregator.crt").read_bytes(), signed
    )  # type: ignore[arg-type]
    monkeypatch.setattr(SecureRound, "fetch", substitute(SecureRound.fetch))
    with served_aggregator(workspace) as served:
        start = {k: v.copy() for k, v in served.aggregator.model.items()}
        _run_collaborators(served)
        assert served.aggregator.finished.wait(60)
        final = served.aggregator.model
    (session,) = [
        r
        for r in read_metrics(workspace / "logs" / "metrics.jsonl")
        if r["event"] == "secure_aggregation"
    ]
    assert session["outcome"] == "aborted" and session["contributors"] == []
    reasons = " ".join(session["dropped"].values())
    assert "substituted" in reasons or "not signed" in reasons
    for key in start:
        np.testing.assert_array_equal(final[key], start[key])
    # Nobody sent shares or a masked input once the substitution was seen.
    assert not any(Step.SHARE_KEYS in r or Step.MASKED_INPUT in r for r in received.values())


class _SplitView:
    """A malicious aggregator: it tells site-3 and site-4 that site-1 sent no masked input and
    the others that it did, skips its own check of the signatures, and forwards to each
    collaborator its own survivor set with ``forward`` signatures ("all" or "alike")."""

    told_dropped = ("site-3", "site-4")

    def __init__(self, forward: str) -> None:
        self.forward = forward
        self.session: SecureRound | None = None

    def view(self, name: str, survivors: tuple[str, ...]) -> tuple[str, ...]:
        return (
            tuple(n for n in survivors if n != "site-1") if name in self.told_dropped else survivors
        )

    def __call__(self, original):  # noqa: ANN001, ANN204
        split = self

        def fetch(session: SecureRound, name: str, step: Step) -> StageReply:
            split.session = session
            reply = original(session, name, step)
            if reply.status != "ready":
                return reply
            if step is Step.MASKED_INPUT:
                survivors = SurvivorList.from_bytes(reply.payload).survivors
                lie = SurvivorList(split.view(name, survivors))
                return dataclasses.replace(reply, payload=lie.to_bytes())
            if step is Step.CONSISTENCY_CHECK:
                request = UnmaskingRequest.from_bytes(reply.payload)
                mine = split.view(name, request.survivors)
                signatures = {
                    n: s
                    for n, s in request.signatures.items()
                    if split.forward == "all" or split.view(n, request.survivors) == mine
                }
                lie = UnmaskingRequest(mine, signatures)
                return dataclasses.replace(reply, payload=lie.to_bytes())
            return reply

        return fetch


@pytest.mark.parametrize("forward", ["all", "alike"])
def test_an_aggregator_showing_different_survivor_sets_gets_no_share(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, forward: str
) -> None:
    received = _tap(monkeypatch)
    split = _SplitView(forward)
    monkeypatch.setattr(SecureRound, "fetch", split(SecureRound.fetch))
    # A malicious aggregator does not refuse signatures over the sets it lied about.
    monkeypatch.setattr("bastion.privacy.secagg.server.is_valid", lambda *args: True)
    with served_aggregator(workspace) as served:
        start = {k: v.copy() for k, v in served.aggregator.model.items()}
        _run_collaborators(served)
        assert served.aggregator.finished.wait(60)
        final = served.aggregator.model
    assert split.session is not None and split.session.server is not None
    held = split.session.server.held_secrets()
    (record,) = [
        r
        for r in read_metrics(workspace / "logs" / "metrics.jsonl")
        if r["event"] == "secure_aggregation"
    ]
    assert record["outcome"] == "aborted" and record["contributors"] == []
    assert "nothing was unmasked" in record["reason"]
    reasons = " ".join(record["dropped"].values())
    expected = "not its identity key's signature" if forward == "all" else "fewer than"
    assert expected in reasons and len(record["dropped"]) == COLLABORATORS
    for key in start:
        np.testing.assert_array_equal(final[key], start[key])
    # Everyone signed the set it was told, and then nobody revealed a single share.
    assert all(Step.CONSISTENCY_CHECK in r for r in received.values())
    assert not any(Step.UNMASKING in r for r in received.values())
    assert all(h.self_mask_shares == h.key_shares == 0 for h in held.values())
    assert not any(h.self_mask_recovered or h.key_recovered for h in held.values())
