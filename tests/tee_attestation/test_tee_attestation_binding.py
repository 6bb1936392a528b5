"""Report data binds a quote to one TLS key and one single-use, expiring nonce."""

from __future__ import annotations

import hashlib
import threading

import pytest
from cryptography.hazmat.primitives import serialization

from bastion.tee.attestation import (
    AttestationPolicy,
    BindingError,
    NonceExpired,
    NonceRegistry,
    NonceRegistryFull,
    NonceReplayed,
    NonceUnknown,
    SimulatedProvider,
    build_simulated_hierarchy,
    report_data_for,
    tls_public_key_der,
    verify_quote,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_report_data_is_sha256_of_spki_and_nonce_padded_with_zeros(pki) -> None:
    spki = pki.pck.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce = b"\x07" * 32
    data = report_data_for(tls_public_key_der(pki.pck), nonce)
    assert data == hashlib.sha256(spki + nonce).digest() + bytes(32)
    assert tls_public_key_der(pki.pck) == tls_public_key_der(pki.pck_key.public_key())


def test_nonce_must_be_32_bytes(pki) -> None:
    with pytest.raises(BindingError, match="32 bytes"):
        report_data_for(tls_public_key_der(pki.pck), b"short")


def test_tls_key_must_be_spki_der(pki) -> None:
    pem = pki.pck.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(BindingError, match="SubjectPublicKeyInfo"):
        report_data_for(pem, bytes(32))


def test_nonce_is_single_use() -> None:
    registry = NonceRegistry()
    nonce = registry.issue("alice")
    assert len(nonce) == 32
    registry.consume("alice", nonce)
    with pytest.raises(NonceReplayed):
        registry.consume("alice", nonce)


def test_nonce_expires() -> None:
    clock = FakeClock()
    registry = NonceRegistry(ttl_seconds=60, clock=clock)
    nonce = registry.issue("alice")
    clock.now += 60.5
    with pytest.raises(NonceExpired, match="expired"):
        registry.consume("alice", nonce)
    with pytest.raises(NonceExpired):  # still expired, not "replayed"
        registry.consume("alice", nonce)


def test_nonce_is_usable_just_before_expiry() -> None:
    clock = FakeClock()
    registry = NonceRegistry(ttl_seconds=60, clock=clock)
    nonce = registry.issue("alice")
    clock.now += 59.9
    registry.consume("alice", nonce)


def test_long_forgotten_nonces_are_unknown() -> None:
    clock = FakeClock()
    registry = NonceRegistry(ttl_seconds=10, clock=clock)
    nonce = registry.issue("alice")
    registry.consume("alice", nonce)
    clock.now += 25
    with pytest.raises(NonceUnknown):
        registry.consume("alice", nonce)
    assert len(registry) == 0


def test_nonce_is_bound_to_its_peer() -> None:
    registry = NonceRegistry()
    nonce = registry.issue("alice")
    with pytest.raises(NonceUnknown, match="bob"):
        registry.consume("bob", nonce)
    registry.consume("alice", nonce)  # bob's attempt did not burn alice's nonce


def test_never_issued_nonce_is_unknown() -> None:
    with pytest.raises(NonceUnknown):
        NonceRegistry().consume("alice", bytes(32))


def test_nonces_are_random() -> None:
    registry = NonceRegistry()
    assert len({registry.issue("alice") for _ in range(16)}) == 16


def test_each_peer_holds_a_bounded_number_of_unused_nonces() -> None:
    registry = NonceRegistry(max_per_peer=3)
    first = registry.issue("alice")
    later = [registry.issue("alice") for _ in range(3)]
    with pytest.raises(NonceUnknown):
        registry.consume("alice", first)  # evicted as the oldest
    for nonce in later:
        registry.consume("alice", nonce)


def test_registry_is_bounded_overall() -> None:
    registry = NonceRegistry(max_per_peer=1, max_entries=4)
    for peer in "abcd":
        registry.issue(peer)
    with pytest.raises(NonceRegistryFull):
        registry.issue("e")


def test_spent_nonces_make_room_when_the_registry_is_full() -> None:
    registry = NonceRegistry(max_per_peer=1, max_entries=2)
    registry.consume("a", registry.issue("a"))
    registry.issue("b")
    registry.issue("c")  # the spent nonce of "a" was dropped to make room
    assert len(registry) == 2


def test_concurrent_consumers_get_exactly_one_success() -> None:
    registry = NonceRegistry()
    nonce = registry.issue("alice")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            registry.consume("alice", nonce)
            outcomes.append("ok")
        except NonceReplayed:
            outcomes.append("replayed")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["replayed"] * 7


def test_bad_registry_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        NonceRegistry(ttl_seconds=0)


def test_challenge_response_round_trip_and_replay(pki) -> None:
    """Verifier issues a nonce; the attester quotes over its TLS key and the nonce."""
    hierarchy = build_simulated_hierarchy()
    attester_tls = pki.new_key()
    provider = SimulatedProvider(hierarchy, mr_enclave="aa" * 32, mr_signer="bb" * 32)
    policy = AttestationPolicy(mrenclave=["aa" * 32], allow_simulated=True, collateral="none")
    registry = NonceRegistry(ttl_seconds=policy.nonce_ttl_seconds)

    nonce = registry.issue("collaborator-1")
    evidence = provider.quote(report_data_for(tls_public_key_der(attester_tls.public_key()), nonce))

    expected = report_data_for(tls_public_key_der(attester_tls.public_key()), nonce)
    registry.consume("collaborator-1", nonce)
    result = verify_quote(
        evidence.quote, policy, expected, simulated_root=hierarchy.root_certificate
    )
    assert result.simulated
    with pytest.raises(NonceReplayed):
        registry.consume("collaborator-1", nonce)
