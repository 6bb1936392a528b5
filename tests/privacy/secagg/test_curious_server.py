"""A curious aggregator learns nothing about one client's input and never both of its secrets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from bastion.errors import ProtocolError
from bastion.privacy.errors import SecAggAborted
from bastion.privacy.secagg.protocol import SecAggClient, SecAggServer, UnmaskingRequest
from bastion.privacy.secagg.shamir import ShamirError, Share, combine

from .driver import Federation, make_federation, run_round


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
    assert chisquare(masked).pvalue > 0.001
    assert chisquare(plain).pvalue < 1e-12  # the test does tell non-uniform bytes apart


def _through_masked_input(federation: Federation, threshold: int) -> tuple:
    config = federation.config(threshold=threshold, vector_length=8)
    server = SecAggServer(config)
    clients = federation.clients(config)
    for name, client in clients.items():
        server.receive_advertise(name, client.advertise_keys())
    roster = server.close_advertise()
    for name, client in clients.items():
        server.receive_shares(name, client.share_keys(roster))
    per_client = server.close_shares()
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
    """The server tells some clients that the target dropped and the rest that it survived."""
    federation = make_federation(7)
    config, server, clients = _through_masked_input(federation, threshold=4)
    target = federation.names[0]
    others = federation.names[1:]
    everyone = tuple(federation.names)
    told_dropped = set(others[:told_dropped_count])
    collected_mask: dict[str, list[Share]] = {n: [] for n in everyone}
    collected_key: dict[str, list[Share]] = {n: [] for n in everyone}
    for name in everyone:
        if name in told_dropped:
            survivors = tuple(n for n in everyone if n != target)
            request = UnmaskingRequest(survivors, (target,))
        else:
            request = UnmaskingRequest(everyone, ())
        answer = _ask(clients[name], request)
        assert answer is not None
        for owner, share in answer[0].items():
            collected_mask[owner].append(Share.from_bytes(share))
        for owner, share in answer[1].items():
            collected_key[owner].append(Share.from_bytes(share))
    t = config.threshold
    for name in everyone:
        assert not (len(collected_mask[name]) >= t and len(collected_key[name]) >= t)
    assert len(collected_key[target]) == told_dropped_count
    assert len(collected_mask[target]) == len(everyone) - told_dropped_count
    short = collected_key[target] if told_dropped_count < t else collected_mask[target]
    with pytest.raises(ShamirError):
        combine(short, t)
    # A second request to the same clients is refused: one answer per round.
    for name in everyone:
        assert _ask(clients[name], UnmaskingRequest(tuple(others), (target,))) is None


def test_client_refuses_a_request_for_both_secrets_of_one_client() -> None:
    federation = make_federation(5)
    _, _, clients = _through_masked_input(federation, threshold=3)
    names = tuple(federation.names)
    with pytest.raises(SecAggAborted, match="both secrets"):
        clients[names[0]].unmask(UnmaskingRequest(names, (names[1],)))


def test_client_refuses_to_reveal_its_own_key_share() -> None:
    federation = make_federation(5)
    _, _, clients = _through_masked_input(federation, threshold=3)
    names = tuple(federation.names)
    with pytest.raises(SecAggAborted, match="sent no masked input"):
        clients[names[0]].unmask(UnmaskingRequest(names[1:], (names[0],)))


def test_server_refuses_to_store_shares_of_the_other_kind() -> None:
    federation = make_federation(5)
    config, server, clients = _through_masked_input(federation, threshold=3)
    request = server.close_masked_inputs()
    assert request.dropped == ()
    # A client that (wrongly) volunteers key shares of survivors is rejected outright.
    honest = clients[federation.names[0]].unmask(request)
    forged = type(honest)(honest.client, honest.self_mask_shares, dict(honest.self_mask_shares))
    with pytest.raises(ProtocolError, match="did not drop"):
        server.receive_unmasking(honest.client, forged)
    for name in federation.names[1:]:
        server.receive_unmasking(name, clients[name].unmask(request))
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
    for name, client in clients.items():
        server.receive_advertise(name, client.advertise_keys())
    roster = server.close_advertise()
    for name, client in clients.items():
        server.receive_shares(name, client.share_keys(roster))
    per_client = server.close_shares()
    senders = federation.names[:6]  # two drop after sharing keys
    for name in senders:
        vector = np.zeros(8, dtype=np.uint32)
        server.receive_masked_input(name, clients[name].masked_input(per_client[name], vector))
    request = server.close_masked_inputs()
    assert set(request.dropped) == set(federation.names[6:])
    for name in request.survivors:
        server.receive_unmasking(name, clients[name].unmask(request))
        for held in server.held_secrets().values():
            assert not (held.self_mask_shares >= 5 and held.key_shares >= 5)
    result = server.finalize()
    assert np.array_equal(result.total, np.zeros(8, dtype=np.uint32))
    audit = server.held_secrets()
    for name in federation.names:
        assert not (audit[name].self_mask_recovered and audit[name].key_recovered)
    assert {n for n, h in audit.items() if h.key_recovered} == set(federation.names[6:])
