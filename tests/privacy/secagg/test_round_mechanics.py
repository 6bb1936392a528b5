"""Configuration checks, the SecAgg+ graph, message codecs, weighted sums and overhead figures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bastion.errors import ProtocolError
from bastion.privacy.errors import SecAggAborted, SecAggError
from bastion.privacy.secagg.encoding import WeightedUpdateEncoder
from bastion.privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    Message,
    SharesForClient,
    SurvivorList,
    UnmaskingRequest,
    UnmaskingResponse,
)
from bastion.privacy.secagg.protocol import SecAggConfig, SecAggServer, Stage
from bastion.privacy.secagg.quantize import FixedPointQuantizer

from .driver import make_federation, run_round, share_all_keys

NAMES = tuple(f"c{i}" for i in range(10))


def _config(**changes: object) -> SecAggConfig:
    fields: dict = {
        "clients": NAMES,
        "threshold": 6,
        "vector_length": 4,
        "session_id": b"x" * 32,
        "round_number": 1,
    }
    fields.update(changes)
    return SecAggConfig(**fields)


@pytest.mark.parametrize(("threshold", "degree"), [(5, None), (11, None), (2, 4), (6, 4)])
def test_thresholds_a_lying_server_could_exploit_are_refused(
    threshold: int, degree: int | None
) -> None:
    with pytest.raises(SecAggError, match="more than half"):
        _config(threshold=threshold, neighbours=degree)


@pytest.mark.parametrize(
    "changes",
    [
        {"clients": ("a", "a", "b")},
        {"clients": ("a",), "threshold": 1},
        {"session_id": b"short"},
        {"neighbours": 3, "threshold": 3},
        {"neighbours": 10, "threshold": 6},
        {"modulus_bits": 16},
    ],
)
def test_malformed_configs_are_refused(changes: dict) -> None:
    with pytest.raises(SecAggError):
        _config(**changes)


def test_secagg_plus_graph_is_regular_symmetric_and_shared() -> None:
    config = _config(neighbours=4, threshold=3)
    again = _config(neighbours=4, threshold=3)
    other = _config(neighbours=4, threshold=3, session_id=b"y" * 32)
    graph = {name: config.neighbours_of(name) for name in NAMES}
    assert all(len(peers) == 4 and name not in peers for name, peers in graph.items())
    assert all(name in graph[peer] for name, peers in graph.items() for peer in peers)
    assert graph == {name: again.neighbours_of(name) for name in NAMES}
    assert graph != {name: other.neighbours_of(name) for name in NAMES}
    assert config.holders_of("c0") == graph["c0"] | {"c0"}


def test_secagg_plus_sends_fewer_bytes_than_the_complete_graph() -> None:
    federation = make_federation(12)
    inputs = {n: np.zeros(16, dtype=np.uint32) for n in federation.names}
    full = run_round(federation, federation.config(7, 16), inputs)
    sparse = run_round(federation, federation.config(3, 16, neighbours=4), inputs)
    full_bytes = full.server.stats.stages[Stage.SHARE_KEYS].bytes_received
    sparse_bytes = sparse.server.stats.stages[Stage.SHARE_KEYS].bytes_received
    assert sparse_bytes < full_bytes / 2


def test_every_message_survives_its_byte_codec() -> None:
    messages: list[Message] = [
        AdvertiseKeys("a", b"c" * 32, b"s" * 32, b"sig", b"-----BEGIN CERTIFICATE-----"),
        KeyRoster((AdvertiseKeys("a", b"c" * 32, b"s" * 32, b"sig"),)),
        EncryptedShares("a", {"b": b"ct1", "c": b"ct2"}),
        SharesForClient("b", {"a": b"ct1"}),
        MaskedInput("a", np.arange(5, dtype=np.uint64)),
        SurvivorList(("a", "b", "c")),
        ConsistencySignature("a", b"signature"),
        UnmaskingRequest(("a", "b"), {"a": b"sig-a", "b": b"sig-b"}),
        UnmaskingResponse("a", {"b": b"share"}, {"c": b"share2"}),
    ]
    for message in messages:
        data = message.to_bytes()
        decoded = type(message).from_bytes(data)
        assert decoded.to_bytes() == data
        with pytest.raises(ProtocolError):
            type(message).from_bytes(data[:-1])
        with pytest.raises(ProtocolError):
            type(message).from_bytes(data + b"\x00")
    with pytest.raises(ProtocolError, match="expected a KeyRoster"):
        KeyRoster.from_bytes(messages[0].to_bytes())


def test_weighted_fedavg_composes_through_the_protocol() -> None:
    federation = make_federation(5)
    rng = np.random.default_rng(11)
    like = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    encoder = WeightedUpdateEncoder(like, FixedPointQuantizer(clip=1.0, bits=24), max_weight=1000)
    updates = {
        n: {k: rng.uniform(-1, 1, v.shape) for k, v in like.items()} for n in federation.names
    }
    weights = {n: float(rng.integers(1, 1000)) for n in federation.names}
    inputs = {n: encoder.encode(updates[n], weights[n]) for n in federation.names}
    config = federation.config(3, encoder.vector_length)
    state = run_round(federation, config, inputs, {Stage.MASKED_INPUT: {federation.names[4]}})
    assert state.result is not None
    decoded = encoder.decode(state.result.total, len(state.result.contributors))
    survivors = federation.names[:4]
    assert decoded.total_weight == pytest.approx(sum(weights[n] for n in survivors), abs=0.01)
    for name in like:
        plain = sum(weights[n] * updates[n][name] for n in survivors)
        np.testing.assert_allclose(decoded.weighted_sum[name], plain, atol=1e-2)
    expected_average = sum(weights[n] * updates[n]["w"] for n in survivors) / sum(
        weights[n] for n in survivors
    )
    np.testing.assert_allclose(decoded.average()["w"], expected_average, atol=1e-4)


def test_weights_above_the_public_maximum_are_refused() -> None:
    encoder = WeightedUpdateEncoder({"w": np.zeros(2)}, FixedPointQuantizer(1.0), max_weight=10)
    with pytest.raises(SecAggError, match="at most max_weight"):
        encoder.encode({"w": np.zeros(2)}, 11)


def test_overhead_counts_the_bytes_each_side_exchanged() -> None:
    federation = make_federation(4)
    inputs = {n: np.zeros(100, dtype=np.uint32) for n in federation.names}
    state = run_round(federation, federation.config(3, 100), inputs)
    server_stages = state.server.stats.stages
    sent_by_clients = sum(
        c.stats.stages[Stage.MASKED_INPUT].bytes_sent for c in state.clients.values()
    )
    assert server_stages[Stage.MASKED_INPUT].bytes_received == sent_by_clients >= 4 * 400
    received_by_clients = sum(
        c.stats.stages[Stage.SHARE_KEYS].bytes_received for c in state.clients.values()
    )
    assert server_stages[Stage.SHARE_KEYS].bytes_sent == received_by_clients
    assert all(s.seconds > 0 for s in server_stages.values())
    assert set(state.server.stats.as_dict()) == {stage.value for stage in Stage}


def test_out_of_order_and_impersonating_messages_are_refused() -> None:
    federation = make_federation(3)
    config = federation.config(2, 4)
    clients = federation.clients(config)
    server = SecAggServer(config)
    a, b = federation.names[:2]
    with pytest.raises(SecAggAborted, match="out-of-order"):
        clients[a].unmask(UnmaskingRequest((a, b), {}))
    with pytest.raises(SecAggAborted, match="already aborted"):
        clients[a].advertise_keys()
    advertisement = clients[b].advertise_keys()
    with pytest.raises(ProtocolError, match="in the name of"):
        server.receive_advertise(a, advertisement)
    server.receive_advertise(b, advertisement)
    with pytest.raises(ProtocolError, match="may not send"):
        server.receive_advertise(b, advertisement)
    with pytest.raises(ProtocolError, match="not share_keys"):
        server.close_shares()


def test_tampered_share_ciphertext_aborts_the_recipient() -> None:
    federation = make_federation(3)
    config = federation.config(2, 4)
    clients = federation.clients(config)
    server = SecAggServer(config)
    per_client = share_all_keys(server, clients)
    a, b = federation.names[:2]
    delivered = per_client[a]
    ciphertext = delivered.ciphertexts[b]
    flipped = ciphertext[:-1] + bytes([ciphertext[-1] ^ 0x80])
    tampered = dataclasses.replace(delivered, ciphertexts={**delivered.ciphertexts, b: flipped})
    with pytest.raises(SecAggAborted, match="failed authentication"):
        clients[a].masked_input(tampered, np.zeros(4, dtype=np.uint32))


def test_inputs_of_the_wrong_shape_or_dtype_are_refused() -> None:
    federation = make_federation(3)
    config = federation.config(2, 4)
    with pytest.raises(SecAggError, match="quantize it"):
        run_round(federation, config, {n: np.zeros(4, dtype=np.float32) for n in federation.names})
