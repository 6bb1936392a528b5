"""ConsistencyCheck (Bonawitz et al. 2017, round 3): a server that shows clients different
survivor sets, or forges or drops their signatures, gets no share at all; dropouts in the
new stage are tolerated like dropouts after masked input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.errors import ProtocolError
from bastion.privacy.errors import SecAggAborted
from bastion.privacy.secagg import keys
from bastion.privacy.secagg.client import ClientState
from bastion.privacy.secagg.consistency import signers_needed_by
from bastion.privacy.secagg.masking import pairwise_mask, remove_pairwise, self_mask
from bastion.privacy.secagg.protocol import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Stage,
    SurvivorList,
    UnmaskingRequest,
    UnmaskingResponse,
)
from bastion.privacy.secagg.shamir import Share, combine

from .driver import Federation, make_federation, new_round, play, share_all_keys, signed_requests

VECTOR = 16


@dataclasses.dataclass
class Masked:
    """A round driven up to (and including) the masked inputs, with what the server holds."""

    config: SecAggConfig
    server: SecAggServer
    clients: dict[str, SecAggClient]
    inputs: dict[str, np.ndarray]
    masked: dict[str, np.ndarray]
    s_public: dict[str, bytes]


def _masked(
    federation: Federation,
    config: SecAggConfig,
    senders: list[str] | None = None,
    isolate: tuple[str, set[str]] | None = None,
) -> Masked:
    """Advertise, share and mask; ``isolate=(victim, peers)`` forwards the victim only the
    shares of ``peers``, so it masks with them alone (the server's first move in the
    isolation attack)."""
    server = SecAggServer(config)
    clients = federation.clients(config)
    rng = np.random.default_rng(1)
    inputs = {n: rng.integers(0, 1000, VECTOR).astype(np.uint32) for n in federation.names}
    for name, client in clients.items():
        server.receive_advertise(name, client.advertise_keys())
    roster = server.close_advertise()  # the test keeps each client's advertised s key
    for name, client in clients.items():
        server.receive_shares(name, client.share_keys(roster))
    per_client = server.close_shares()
    if isolate is not None:
        victim, peers = isolate
        kept = {p: c for p, c in per_client[victim].ciphertexts.items() if p in peers}
        per_client[victim] = dataclasses.replace(per_client[victim], ciphertexts=kept)
    masked = {}
    for name in senders or federation.names:
        message = clients[name].masked_input(per_client[name], inputs[name])
        masked[name] = message.vector
        server.receive_masked_input(name, message)
    s_public = {entry.client: entry.s_public for entry in roster.keys}
    return Masked(config, server, clients, inputs, masked, s_public)


def _split_view_round(
    state: Masked, views: Mapping[str, tuple[str, ...]], forward: str
) -> dict[str, UnmaskingResponse | str]:
    """The server shows each client its own U3, collects the signatures, and forwards
    ``forward="all"`` of them or only ``"alike"`` (those over the recipient's view)."""
    signatures: dict[str, bytes] = {}
    answers: dict[str, UnmaskingResponse | str] = {}
    for name, view in views.items():
        try:
            signatures[name] = state.clients[name].consistency_check(SurvivorList(view)).signature
        except SecAggAborted as exc:
            answers[name] = str(exc)
    for name in signatures:
        chosen = {
            n: s for n, s in signatures.items() if forward == "all" or views[n] == views[name]
        }
        try:
            answers[name] = state.clients[name].unmask(UnmaskingRequest(views[name], chosen))
        except SecAggAborted as exc:
            answers[name] = str(exc)
    return answers


def _collected(answers: Mapping[str, UnmaskingResponse | str]) -> tuple[dict, dict]:
    """Per owner, the self-mask shares and the key shares the server received."""
    masks: dict[str, list[Share]] = {}
    keys_: dict[str, list[Share]] = {}
    for answer in answers.values():
        if isinstance(answer, UnmaskingResponse):
            for owner, share in answer.self_mask_shares.items():
                masks.setdefault(owner, []).append(Share.from_bytes(share))
            for owner, share in answer.key_shares.items():
                keys_.setdefault(owner, []).append(Share.from_bytes(share))
    return masks, keys_


# ---------------------------------------------------------------- dropouts in the new stage


@pytest.mark.parametrize(
    ("n", "t", "neighbours", "drop"),
    [
        (9, 5, None, {Stage.CONSISTENCY_CHECK: 4}),
        (9, 5, None, {Stage.CONSISTENCY_CHECK: 2, Stage.UNMASKING: 2}),
        (9, 5, None, {Stage.MASKED_INPUT: 1, Stage.CONSISTENCY_CHECK: 3}),
        (10, 3, 4, {Stage.CONSISTENCY_CHECK: 1}),
    ],
    ids=["n-t-in-check", "check-and-unmasking", "masked-and-check", "secagg+"],
)
def test_up_to_n_minus_t_dropouts_in_the_check_still_give_the_sum(
    n: int, t: int, neighbours: int | None, drop: dict[Stage, int]
) -> None:
    federation = make_federation(n)
    config = federation.config(t, VECTOR, neighbours=neighbours)
    rng = np.random.default_rng(7)
    inputs = {name: rng.integers(0, 1000, VECTOR).astype(np.uint32) for name in federation.names}
    names = iter(federation.names)
    drop_before = {stage: {next(names) for _ in range(count)} for stage, count in drop.items()}
    state = play(new_round(federation, config), inputs, drop_before)
    assert state.result is not None
    # Sites silent in the check still sent masked input: they are in the sum.
    senders = state.senders[Stage.MASKED_INPUT]
    assert list(state.result.contributors) == senders
    expected = sum(inputs[name].astype(np.int64) for name in senders)
    assert np.array_equal(state.result.total.astype(np.int64), expected)
    for name in drop_before.get(Stage.CONSISTENCY_CHECK, ()):
        assert state.server.held_secrets()[name].self_mask_recovered


def test_more_than_n_minus_t_dropouts_in_the_check_abort_before_any_share() -> None:
    federation = make_federation(7)
    config = federation.config(4, VECTOR)
    inputs = {name: np.zeros(VECTOR, np.uint32) for name in federation.names}
    state = new_round(federation, config)
    with pytest.raises(SecAggAborted, match="signed the survivor set"):
        play(state, inputs, {Stage.CONSISTENCY_CHECK: set(federation.names[:4])})
    assert Stage.UNMASKING not in state.senders  # nobody was asked to reveal anything
    held = state.server.held_secrets().values()
    assert all(h.self_mask_shares == h.key_shares == 0 for h in held)
    assert not any(h.self_mask_recovered or h.key_recovered for h in held)


# ---------------------------------------------------------------- split views


@pytest.mark.parametrize("forward", ["all", "alike"])
def test_a_split_survivor_view_is_refused_by_every_client(forward: str) -> None:
    """Half the clients hear the victim survived, half that it dropped: neither half has t
    signatures over its view, so nobody reveals anything and the round cannot finish."""
    federation = make_federation(6)
    state = _masked(federation, federation.config(4, VECTOR))
    everyone = tuple(federation.names)  # the victim is everyone[0], told alive to the first 3
    views = {n: everyone if n in everyone[:3] else everyone[1:] for n in everyone}
    answers = _split_view_round(state, views, forward)
    assert set(answers) == set(everyone)
    assert all(isinstance(a, str) for a in answers.values()), answers
    reasons = " ".join(str(a) for a in answers.values())
    assert ("not its identity key's signature" if forward == "all" else "fewer than") in reasons
    assert all(c.state is ClientState.ABORTED for c in state.clients.values())
    assert _collected(answers) == ({}, {})  # the server received no share of anything


def test_the_honest_server_aborts_when_its_clients_refuse() -> None:
    """The server's own code forwards what it was sent; a tampered U3 leaves it unable to
    finish: it aborts with nothing unmasked and holds no share."""
    federation = make_federation(5)
    state = _masked(federation, federation.config(3, VECTOR))
    server, clients = state.server, state.clients
    announced = server.close_masked_inputs()
    everyone = announced.survivors
    for name in everyone:  # two clients hear that the first one dropped
        view = everyone[1:] if name in everyone[3:] else everyone
        server.receive_signature(name, clients[name].consistency_check(SurvivorList(view)))
    requests = server.close_consistency()  # no verifier here: the server cannot tell
    refusals = 0
    for name, request in requests.items():
        try:
            server.receive_unmasking(name, clients[name].unmask(request))
        except SecAggAborted:
            refusals += 1
    assert refusals == len(everyone)
    with pytest.raises(SecAggAborted, match="nothing was unmasked"):
        server.finalize()
    assert all(h.self_mask_shares == h.key_shares == 0 for h in server.held_secrets().values())


@pytest.mark.parametrize(("n", "t"), [(5, 3), (7, 4)])
def test_isolating_a_client_and_splitting_views_yields_nothing(n: int, t: int) -> None:
    """The attack of the protocol's old "not covered" note: the victim gets the shares of only
    t - 1 peers P and masks with them alone; the server then shows the other clients R a U3
    without P, and each p in P a U3 with p alive, hoping for the victim's self-mask seed from
    everyone and each p's key from R and the rest of P.

    Before the check, answering those views (one kind of share per client, each view passing
    every client-side test) handed the server the victim's input; with it, nobody answers.
    """
    federation = make_federation(n)
    names = federation.names
    victim, peers, rest = names[0], set(names[1:t]), names[t:]
    state = _masked(federation, federation.config(t, VECTOR), isolate=(victim, peers))
    without_peers = tuple(x for x in names if x not in peers)
    views = {x: without_peers for x in rest}
    views |= {p: tuple(sorted({*without_peers, p})) for p in peers}
    views[victim] = tuple(sorted({victim, *peers}))  # the only set the victim would sign

    # What the server would have gained had each client answered its view.
    would = {
        x: UnmaskingResponse(
            x,
            {o: s[1].to_bytes() for o, s in state.clients[x]._held.items() if o in view},
            {o: s[0].to_bytes() for o, s in state.clients[x]._held.items() if o not in view},
        )
        for x, view in views.items()
        if x != victim
    }
    masks, keys_ = _collected(would)
    assert all(len(keys_.get(o, [])) < t for o in masks if len(masks[o]) >= t)  # no "both"
    recovered = _unmask_alone(state, victim, peers, masks, keys_)
    assert np.array_equal(recovered, state.inputs[victim])  # the attack was real

    answers = _split_view_round(state, views, forward="alike")
    assert all(isinstance(a, str) for a in answers.values()), answers
    assert _collected(answers) == ({}, {})


def _unmask_alone(
    state: Masked, victim: str, peers: set[str], masks: dict, keys_: dict
) -> np.ndarray:
    """The victim's input from its masked input alone, its self-mask seed and its peers' keys."""
    config = state.config
    vector = state.masked[victim].copy()
    vector -= self_mask(config, combine(masks[victim], config.threshold))
    for peer in sorted(peers):
        private = keys.load_private(combine(keys_[peer], config.threshold))
        seed = keys.pairwise_seed(
            private, state.s_public[victim], config.session_id, config.round_number, peer, victim
        )
        remove_pairwise(vector, pairwise_mask(config, seed), victim, peer)
    return vector


def test_every_share_is_revealed_under_one_survivor_set_on_a_secagg_plus_ring() -> None:
    """Random two-way splits of a SecAgg+ ring: whatever a server forwards, all shares of one
    client come out under one U3. Counting signatures in the revealer's own neighbourhood
    (instead of the owner's) would have let some owners' shares out under both sets."""
    federation = make_federation(10)
    config = federation.config(3, VECTOR, neighbours=4)
    t = config.threshold
    rng = np.random.default_rng(5)
    own_rule_splits = 0
    for _ in range(12):
        state = _masked(federation, config)
        everyone = tuple(federation.names)
        first = {str(x) for x in rng.choice(everyone, size=5, replace=False)}
        gone = str(rng.choice(sorted(first)))
        views = {
            x: everyone if x in first else tuple(y for y in everyone if y != gone) for x in everyone
        }
        answers = _split_view_round(state, views, forward="alike")
        revealed_under: dict[str, set[tuple[str, ...]]] = {}
        for name, answer in answers.items():
            if isinstance(answer, UnmaskingResponse):
                for owner in [*answer.self_mask_shares, *answer.key_shares]:
                    revealed_under.setdefault(owner, set()).add(views[name])
        assert all(len(sets) == 1 for sets in revealed_under.values()), revealed_under
        # The same views, judged by the revealer's own neighbourhood only.
        own_rule: dict[str, set[tuple[str, ...]]] = {}
        for name, view in views.items():
            alike = {x for x in everyone if views[x] == view} & signers_needed_by(config, name)
            if len(alike & config.holders_of(name)) >= t:
                for owner in config.holders_of(name):
                    own_rule.setdefault(owner, set()).add(view)
        own_rule_splits += sum(len(sets) > 1 for sets in own_rule.values())
    assert own_rule_splits > 0


# ---------------------------------------------------------------- forged or dropped signatures


def _signature(
    federation: Federation,
    signer: str,
    survivors: frozenset[str],
    config: SecAggConfig,
    key: keys.IdentityPrivateKey | None = None,
) -> bytes:
    payload = keys.consistency_payload(config.session_id, config.round_number, signer, survivors)
    return keys.sign(key or federation.identities[signer], payload)


def _fewer_than_t(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    kept = dict(sorted(request.signatures.items())[: c.threshold - 1])
    return dataclasses.replace(request, signatures=kept)


def _non_member(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    outsider = f.names[-1]  # shared keys, then sent no masked input: not in U3
    signature = _signature(f, outsider, frozenset(request.survivors), c)
    return dataclasses.replace(request, signatures={**request.signatures, outsider: signature})


def _stranger(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    return dataclasses.replace(request, signatures={**request.signatures, "mallory": b"x" * 64})


def _replaced(request: UnmaskingRequest, signature: bytes) -> UnmaskingRequest:
    return dataclasses.replace(request, signatures={**request.signatures, "site-01": signature})


def _other_set(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    other = frozenset(request.survivors) | {f.names[-1]}
    return _replaced(request, _signature(f, "site-01", other, c))


def _other_session(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    other = dataclasses.replace(c, session_id=b"another session!" * 2)
    return _replaced(request, _signature(f, "site-01", frozenset(request.survivors), other))


def _other_round(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    other = dataclasses.replace(c, round_number=c.round_number + 1)
    return _replaced(request, _signature(f, "site-01", frozenset(request.survivors), other))


def _server_key(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return _replaced(request, _signature(f, "site-01", frozenset(request.survivors), c, key))


def _swapped(request: UnmaskingRequest, f: Federation, c: SecAggConfig) -> UnmaskingRequest:
    return _replaced(request, request.signatures["site-02"])


def _other_request_set(
    request: UnmaskingRequest, f: Federation, c: SecAggConfig
) -> UnmaskingRequest:
    return dataclasses.replace(request, survivors=request.survivors[:-1])


TAMPERS = {
    "fewer-than-t": (_fewer_than_t, "fewer than the threshold"),
    "non-member": (_non_member, "not in the survivor set"),
    "stranger": (_stranger, "not in the survivor set"),
    "over-another-U3": (_other_set, "not its identity key's signature"),
    "another-session": (_other_session, "not its identity key's signature"),
    "another-round": (_other_round, "not its identity key's signature"),
    "re-signed-by-server": (_server_key, "not its identity key's signature"),
    "swapped-signature": (_swapped, "not its identity key's signature"),
    "request-names-another-U3": (_other_request_set, "another survivor set"),
}


@pytest.mark.parametrize("tamper", TAMPERS, ids=list(TAMPERS))
def test_forged_or_missing_signatures_are_refused(tamper: str) -> None:
    federation = make_federation(6)
    config = federation.config(4, VECTOR)
    state = _masked(federation, config, senders=federation.names[:5])
    requests = signed_requests(state.server, state.clients)
    change, message = TAMPERS[tamper]
    target = state.clients["site-00"]
    with pytest.raises(SecAggAborted, match=message):
        target.unmask(change(requests["site-00"], federation, config))
    assert target.state is ClientState.ABORTED
    with pytest.raises(SecAggAborted, match="already aborted"):
        target.unmask(requests["site-00"])  # the honest request comes too late: nothing leaks
    # The untampered requests still work for everyone else.
    for name in federation.names[1:5]:
        state.server.receive_unmasking(name, state.clients[name].unmask(requests[name]))
    assert state.server.finalize().contributors == tuple(federation.names[:5])


def test_secagg_plus_counts_signatures_in_each_owners_neighbourhood() -> None:
    """Plenty of valid signatures, but fewer than t from one neighbour's holders: refused."""
    federation = make_federation(10)
    config = federation.config(3, VECTOR, neighbours=4)
    state = _masked(federation, config)
    requests = signed_requests(state.server, state.clients)
    target = "site-00"
    owner = sorted(config.neighbours_of(target))[0]
    request = requests[target]
    holders = config.holders_of(owner)
    dropped = sorted(holders - {target})[: len(holders) - config.threshold + 1]
    kept = {s: sig for s, sig in request.signatures.items() if s not in dropped}
    assert len(kept) >= 2 * config.threshold
    with pytest.raises(SecAggAborted, match="share holders signed the survivor set"):
        state.clients[target].unmask(dataclasses.replace(request, signatures=kept))


def test_secagg_plus_forwards_only_the_signatures_a_client_checks() -> None:
    federation = make_federation(12)
    config = federation.config(3, VECTOR, neighbours=4)
    state = _masked(federation, config)
    requests = signed_requests(state.server, state.clients)
    for name, request in requests.items():
        assert set(request.signatures) == signers_needed_by(config, name)
        assert len(request.signatures) == 9  # ring distance <= k on a Harary graph: 2k + 1


@pytest.mark.parametrize(
    ("view", "message"),
    [
        (lambda names: (*names, names[1]), "twice"),
        (lambda names: (*names, "mallory"), "never advertised keys"),
        (lambda names: names[:2], "fewer than the threshold"),
    ],
    ids=["listed-twice", "stranger", "too-few"],
)
def test_a_client_refuses_to_sign_a_survivor_set_no_honest_server_sends(
    view: Callable[[tuple[str, ...]], tuple[str, ...]], message: str
) -> None:
    federation = make_federation(5)
    state = _masked(federation, federation.config(3, VECTOR))
    client = state.clients["site-00"]
    with pytest.raises(SecAggAborted, match=message):
        client.consistency_check(SurvivorList(view(tuple(federation.names))))
    assert client.state is ClientState.ABORTED


def test_an_isolated_client_refuses_survivors_it_never_shared_keys_with() -> None:
    federation = make_federation(5)
    victim, peers = "site-00", {"site-01", "site-02"}
    state = _masked(federation, federation.config(3, VECTOR), isolate=(victim, peers))
    with pytest.raises(SecAggAborted, match="never shared keys"):
        state.clients[victim].consistency_check(SurvivorList(tuple(federation.names)))


def test_a_server_with_a_verifier_refuses_a_signature_over_another_set() -> None:
    federation = make_federation(4)
    config = federation.config(3, VECTOR)
    server = SecAggServer(config, identity_verifier=federation.verifier)
    clients = federation.clients(config)
    per_client = share_all_keys(server, clients)
    for name, client in clients.items():
        server.receive_masked_input(
            name, client.masked_input(per_client[name], np.zeros(VECTOR, np.uint32))
        )
    announced = server.close_masked_inputs()
    elsewhere = clients["site-00"].consistency_check(SurvivorList(announced.survivors[:-1]))
    with pytest.raises(ProtocolError, match="did not sign the survivor set"):
        server.receive_signature("site-00", elsewhere)
    honest = clients["site-01"].consistency_check(announced)
    server.receive_signature("site-01", honest)
