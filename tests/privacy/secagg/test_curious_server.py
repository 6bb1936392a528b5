"""A curious aggregator learns nothing about one client's input and never both of its secrets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from bastion.errors import ProtocolError
from bastion.privacy.errors import SecAggAborted
from bastion.privacy.secagg.protocol import (
    SecAggClient,
    SecAggServer,
    SurvivorList,
    UnmaskingRequest,
)
from bastion.privacy.secagg.shamir import Share

from .driver import Federation, make_federation, run_round, share_all_keys, signed_requests


def _byte_counts(vector: np.ndarray) -> np.ndarray:
    return np.bincount(vector.view(np.uint8), minlength=256)


def test_masked_input_is_indistinguishable_from_uniform() -> None:
    federation = make_federation(4)
    length = 1 << 15  # 131072 bytes of uint32 words
    config = federation.config(threshold=3, vector_length=length)
    # A very non-uniform input: small integers, mostly zero bytes.
    inputs = {n: np.arange(length, dtype=np.uint32) % 7 for n in federation.names}
    state = run_round(federation, config, inputs)
    plain = _byte_counts(inputs[federation.names[0]])
    masked = _byte_counts(state.masked[federation.names[0]])
    assert masked.sum() >= 100_000
    assert chisquare(masked).pvalue > 1e-6  # uniform under the null: fails one run in a million
    assert chisquare(plain).pvalue < 1e-12  # the test does tell non-uniform bytes apart


def _through_masked_input(federation: Federation, threshold: int) -> tuple:
    config = federation.config(threshold=threshold, vector_length=8)
    server = SecAggServer(config)
    clients = federation.clients(config)
    per_client = share_all_keys(server, clients)
    for name, client in clients.items():
        vector = np.full(8, 42, dtype=np.uint32)
        server.receive_masked_input(name, client.masked_input(per_client[name], vector))
    return config, server, clients


def _ask(client: SecAggClient, request: UnmaskingRequest) -> tuple[dict, dict] | None:
    try:
        response = client.unmask(request)
    except SecAggAborted:
        return None
    return response.self_mask_shares, response.key_shares


@pytest.mark.parametrize("told_dropped_count", [1, 2, 3, 4, 5, 6])
def test_lying_about_dropouts_never_yields_both_secrets(told_dropped_count: int) -> None:
    """The server tells some clients that the target dropped and the rest that it survived,
    then hands each client the signatures over its own view (its best chance)."""
    federation = make_federation(7)
    config, server, clients = _through_masked_input(federation, threshold=4)
    target = federation.names[0]
    others = federation.names[1:]
    everyone = tuple(federation.names)
    told_dropped = set(others[:told_dropped_count])
    views = {
        name: tuple(n for n in everyone if n != target) if name in told_dropped else everyone
        for name in everyone
    }
    signatures = {
        name: clients[name].consistency_check(SurvivorList(views[name])).signature
        for name in everyone
    }
    collected_mask: dict[str, list[Share]] = {n: [] for n in everyone}
    collected_key: dict[str, list[Share]] = {n: [] for n in everyone}
    answered = set()
    for name in everyone:
        alike = {n: sig for n, sig in signatures.items() if views[n] == views[name]}
        answer = _ask(clients[name], UnmaskingRequest(views[name], alike))
        if answer is None:
            continue
        answered.add(name)
        for owner, share in answer[0].items():
            collected_mask[owner].append(Share.from_bytes(share))
        for owner, share in answer[1].items():
            collected_key[owner].append(Share.from_bytes(share))
    t = config.threshold
    # Only the group whose view t clients signed answers; the other refuses outright.
    majority = told_dropped if len(told_dropped) >= t else set(everyone) - told_dropped
    assert answered == majority
    for name in everyone:
        assert not (len(collected_mask[name]) >= t and len(collected_key[name]) >= t)
    short = collected_key[target] if told_dropped_count < t else collected_mask[target]
    assert len(short) == 0
    # A second request to the same clients is refused: one answer per round.
    for name in everyone:
        assert _ask(clients[name], UnmaskingRequest(views[name], signatures)) is None


def test_client_refuses_an_unmasking_request_for_another_survivor_set() -> None:
    federation = make_federation(5)
    _, server, clients = _through_masked_input(federation, threshold=3)
    names = tuple(federation.names)
    requests = signed_requests(server, clients)
    smaller = UnmaskingRequest(names[:-1], requests[names[0]].signatures)
    with pytest.raises(SecAggAborted, match="another survivor set than the one we signed"):
        clients[names[0]].unmask(smaller)


def test_client_refuses_a_survivor_set_without_itself() -> None:
    federation = make_federation(5)
    _, _, clients = _through_masked_input(federation, threshold=3)
    names = tuple(federation.names)
    with pytest.raises(SecAggAborted, match="sent no masked input"):
        clients[names[0]].consistency_check(SurvivorList(names[1:]))


def test_server_refuses_to_store_shares_of_the_other_kind() -> None:
    federation = make_federation(5)
    config, server, clients = _through_masked_input(federation, threshold=3)
    requests = signed_requests(server, clients)
    # A client that (wrongly) volunteers key shares of survivors is rejected outright.
    first = federation.names[0]
    honest = clients[first].unmask(requests[first])
    forged = type(honest)(honest.client, honest.self_mask_shares, dict(honest.self_mask_shares))
    with pytest.raises(ProtocolError, match="did not drop"):
        server.receive_unmasking(honest.client, forged)
    for name in federation.names[1:]:
        server.receive_unmasking(name, clients[name].unmask(requests[name]))
        for held in server.held_secrets().values():
            assert not (held.self_mask_shares >= 3 and held.key_shares >= 3)
    server.finalize()
    held = server.held_secrets()
    assert all(h.key_shares == 0 and not h.key_recovered for h in held.values())


def test_invariant_holds_at_every_step_of_rounds_with_dropouts() -> None:
    federation = make_federation(8)
    config = federation.config(threshold=5, vector_length=8)
    server = SecAggServer(config)
    clients = federation.clients(config)
    per_client = share_all_keys(server, clients)
    senders = federation.names[:6]  # two drop after sharing keys
    for name in senders:
        vector = np.zeros(8, dtype=np.uint32)
        server.receive_masked_input(name, clients[name].masked_input(per_client[name], vector))
    requests = signed_requests(server, clients)
    assert set(requests) == set(senders)
    for name, request in requests.items():
        server.receive_unmasking(name, clients[name].unmask(request))
        for held in server.held_secrets().values():
            assert not (held.self_mask_shares >= 5 and held.key_shares >= 5)
    result = server.finalize()
    assert np.array_equal(result.total, np.zeros(8, dtype=np.uint32))
    audit = server.held_secrets()
    for name in federation.names:
        assert not (audit[name].self_mask_recovered and audit[name].key_recovered)
    assert {n for n, h in audit.items() if h.key_recovered} == set(federation.names[6:])
