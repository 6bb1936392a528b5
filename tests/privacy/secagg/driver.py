"""A transport-free driver for whole secure aggregation rounds, with scripted dropouts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from bastion.privacy.secagg.keys import IdentityPublicKey
from bastion.privacy.secagg.protocol import (
    SecAggClient,
    SecAggConfig,
    SecAggResult,
    SecAggServer,
    Stage,
    UnmaskingRequest,
    session_id_for,
)


@dataclass
class Federation:
    """Identity keys for named clients and the verifier a client would build from certificates."""

    names: list[str]
    identities: dict[str, ed25519.Ed25519PrivateKey]

    def verifier(self, name: str, credential: bytes = b"") -> IdentityPublicKey:
        return self.identities[name].public_key()

    def config(self, threshold: int, vector_length: int, **options: object) -> SecAggConfig:
        return SecAggConfig(
            clients=tuple(self.names),
            threshold=threshold,
            vector_length=vector_length,
            session_id=session_id_for("test-federation", 7),
            round_number=7,
            **options,  # type: ignore[arg-type]
        )

    def clients(self, config: SecAggConfig) -> dict[str, SecAggClient]:
        return {
            name: SecAggClient(name, config, self.identities[name], self.verifier)
            for name in self.names
        }


def make_federation(n: int) -> Federation:
    names = [f"site-{i:02d}" for i in range(n)]
    return Federation(names, {name: ed25519.Ed25519PrivateKey.generate() for name in names})


@dataclass
class Round:
    """Everything one scripted round produced, including what the server saw."""

    server: SecAggServer
    clients: dict[str, SecAggClient]
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    senders: dict[Stage, list[str]] = field(default_factory=dict)
    result: SecAggResult | None = None


def new_round(federation: Federation, config: SecAggConfig) -> Round:
    return Round(SecAggServer(config), federation.clients(config))


def play(
    state: Round,
    inputs: Mapping[str, np.ndarray],
    drop_before: Mapping[Stage, set[str]] | None = None,
) -> Round:
    """Drive all five rounds; a client in ``drop_before[stage]`` goes silent from that stage on."""
    drop_before = drop_before or {}
    server, clients = state.server, state.clients
    gone: set[str] = set()

    def speakers(stage: Stage, allowed: set[str] | list[str]) -> list[str]:
        gone.update(drop_before.get(stage, set()))
        names = [name for name in sorted(allowed) if name not in gone]
        state.senders[stage] = names
        return names

    for name in speakers(Stage.ADVERTISE_KEYS, set(clients)):
        server.receive_advertise(name, clients[name].advertise_keys())
    roster = server.close_advertise()
    for name in speakers(Stage.SHARE_KEYS, [k.client for k in roster.keys]):
        server.receive_shares(name, clients[name].share_keys(roster))
    per_client = server.close_shares()
    for name in speakers(Stage.MASKED_INPUT, list(per_client)):
        message = clients[name].masked_input(per_client[name], inputs[name])
        state.masked[name] = message.vector
        server.receive_masked_input(name, message)
    survivors = server.close_masked_inputs()
    for name in speakers(Stage.CONSISTENCY_CHECK, list(survivors.survivors)):
        server.receive_signature(name, clients[name].consistency_check(survivors))
    requests = server.close_consistency()
    for name in speakers(Stage.UNMASKING, list(requests)):
        server.receive_unmasking(name, clients[name].unmask(requests[name]))
    state.result = server.finalize()
    return state


def share_all_keys(server: SecAggServer, clients: Mapping[str, SecAggClient]) -> dict:
    """Every client advertises its keys and shares them; what the server delivers to each."""
    for name, client in clients.items():
        server.receive_advertise(name, client.advertise_keys())
    roster = server.close_advertise()
    for name, client in clients.items():
        server.receive_shares(name, client.share_keys(roster))
    return server.close_shares()


def signed_requests(
    server: SecAggServer, clients: Mapping[str, SecAggClient]
) -> dict[str, UnmaskingRequest]:
    """Close the masked-input stage and run an honest ConsistencyCheck with every survivor."""
    survivors = server.close_masked_inputs()
    for name in survivors.survivors:
        server.receive_signature(name, clients[name].consistency_check(survivors))
    return server.close_consistency()


def run_round(
    federation: Federation,
    config: SecAggConfig,
    inputs: Mapping[str, np.ndarray],
    drop_before: Mapping[Stage, set[str]] | None = None,
) -> Round:
    return play(new_round(federation, config), inputs, drop_before)


def ring_sum(vectors: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    total = np.zeros_like(vectors[0], dtype=dtype)
    for vector in vectors:
        total += vector
    return total
