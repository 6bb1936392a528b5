"""A server that swaps a client's advertised keys is caught and the round aborted."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bastion.privacy.errors import KeySubstitutionDetected, SecAggAborted
from bastion.privacy.secagg.client import ClientState
from bastion.privacy.secagg.keys import RoundKeys, advertisement_payload, sign
from bastion.privacy.secagg.protocol import KeyRoster, SecAggClient

from .driver import Federation, make_federation


def _advertised(federation: Federation) -> tuple[dict[str, SecAggClient], KeyRoster]:
    config = federation.config(threshold=3, vector_length=4)
    clients = federation.clients(config)
    roster = KeyRoster(tuple(client.advertise_keys() for client in clients.values()))
    return clients, roster


def test_substituted_peer_key_is_detected() -> None:
    federation = make_federation(4)
    clients, roster = _advertised(federation)
    victim = roster.keys[1]
    attacker_keys = RoundKeys.generate()
    swapped = dataclasses.replace(victim, s_public=attacker_keys.s_public)
    forged = KeyRoster((roster.keys[0], swapped, *roster.keys[2:]))
    client = clients[federation.names[0]]
    with pytest.raises(KeySubstitutionDetected, match=victim.client):
        client.share_keys(forged)
    assert client.state is ClientState.ABORTED
    with pytest.raises(SecAggAborted):
        client.share_keys(roster)


def test_keys_signed_by_another_identity_are_detected() -> None:
    """The server signs substituted keys with its own key: the signature is still wrong."""
    federation = make_federation(4)
    clients, roster = _advertised(federation)
    config = clients[federation.names[0]].config
    victim = roster.keys[2]
    fresh = RoundKeys.generate()
    payload = advertisement_payload(
        config.session_id, config.round_number, victim.client, fresh.c_public, fresh.s_public
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    forged_entry = dataclasses.replace(
        victim,
        c_public=fresh.c_public,
        s_public=fresh.s_public,
        signature=sign(server_key, payload),
    )
    forged = KeyRoster(tuple(forged_entry if k is victim else k for k in roster.keys))
    with pytest.raises(KeySubstitutionDetected):
        clients[federation.names[0]].share_keys(forged)


def test_own_keys_replaced_by_the_server_are_detected() -> None:
    federation = make_federation(4)
    clients, roster = _advertised(federation)
    me = federation.names[0]
    others = [k for k in roster.keys if k.client != me]
    with pytest.raises(KeySubstitutionDetected, match="own keys"):
        clients[me].share_keys(KeyRoster(tuple(others)))


def test_keys_replayed_from_another_round_are_detected() -> None:
    federation = make_federation(4)
    clients, roster = _advertised(federation)
    later = federation.config(threshold=3, vector_length=4)
    later = dataclasses.replace(later, round_number=8)
    client = SecAggClient(
        federation.names[0], later, federation.identities[federation.names[0]], federation.verifier
    )
    own = client.advertise_keys()
    replayed = KeyRoster((own, *roster.keys[1:]))
    with pytest.raises(KeySubstitutionDetected):
        client.share_keys(replayed)


def test_unknown_identity_is_refused() -> None:
    federation = make_federation(4)
    clients, roster = _advertised(federation)
    name = federation.names[0]

    def verifier(peer: str, credential: bytes) -> ed25519.Ed25519PublicKey:
        raise LookupError(f"no certificate for {peer}")

    client = SecAggClient(name, clients[name].config, federation.identities[name], verifier)
    with pytest.raises(KeySubstitutionDetected, match="does not prove its identity"):
        client.share_keys(KeyRoster((client.advertise_keys(), *roster.keys[1:])))


@pytest.mark.parametrize(
    "identity",
    [
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ed25519", "ecdsa-p256", "rsa-2048"],
)
def test_every_supported_identity_key_type_signs_and_verifies(identity: object) -> None:
    federation = make_federation(3)
    federation.identities[federation.names[0]] = identity  # type: ignore[assignment]
    clients, roster = _advertised(federation)
    for client in clients.values():
        client.share_keys(roster)


def test_server_with_a_verifier_rejects_badly_signed_advertisements() -> None:
    from bastion.errors import ProtocolError
    from bastion.privacy.secagg.protocol import SecAggServer

    federation = make_federation(3)
    config = federation.config(threshold=2, vector_length=4)
    server = SecAggServer(config, identity_verifier=federation.verifier)
    clients = federation.clients(config)
    a, b = federation.names[:2]
    honest = clients[a].advertise_keys()
    server.receive_advertise(a, honest)
    forged = dataclasses.replace(clients[b].advertise_keys(), signature=honest.signature)
    with pytest.raises(ProtocolError, match="invalid signature"):
        server.receive_advertise(b, forged)
