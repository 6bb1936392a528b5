"""Secure aggregation, Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020.

The five rounds of the malicious-server protocol (Figure 4), driven by the caller's
transport (``SecAggServer`` and ``SecAggClient`` hold all state; the messages are plain
dataclasses)::

    # server (aggregator)                         # client (each collaborator)
    server = SecAggServer(config)                   client = SecAggClient(name, config, key, verify)
    server.receive_advertise(name, msg)        <-   client.advertise_keys()
    roster = server.close_advertise()          ->   client.share_keys(roster)
    server.receive_shares(name, msg)           <-
    per_client = server.close_shares()         ->   client.masked_input(per_client[name], words)
    server.receive_masked_input(name, msg)     <-
    survivors = server.close_masked_inputs()   ->   client.consistency_check(survivors)
    server.receive_signature(name, msg)        <-
    requests = server.close_consistency()      ->   client.unmask(requests[name])
    server.receive_unmasking(name, msg)        <-
    result = server.finalize()                      # SecAggResult(total, contributors)

Threat model. Against an honest-but-curious aggregator, which runs the protocol and
studies everything it receives, the guarantee is that it learns the survivors' sum and
nothing else. Against an actively malicious aggregator, which colludes with no
collaborator, clients detect these deviations and abort before revealing anything:

- substituted keys: each client's keys are signed with its mTLS identity key, checked
  against the CA by every peer;
- forged or redirected shares (AEAD bound to sender, recipient, session and round),
  replayed sessions, a request for a client's own key share;
- inconsistent survivor sets (ConsistencyCheck, ``consistency``): every client in U3 signs
  (session, round, U3), and a client reveals a share of u only if t of u's share holders
  signed exactly the U3 it was told. Each honest client signs once and ``2t > holders``,
  so every share of u is revealed under one survivor set, the same for everyone who
  reveals it. This stops the split-view attacks: telling some holders that u dropped and
  others that it survived; showing a client a view in which only chosen peers are alive;
  and isolating u: forward it the shares of only t - 1 peers, so that it masks with them
  alone, then collect u's self-mask seed from holders told u survived and those peers'
  keys from holders told they dropped. Neither u nor those peers can then reveal u's
  self-mask share (u refuses a set without its mask peers; a peer reveals its own share
  only if t of its holders signed a set with it alive, and then no t signed one without
  it), and u's other holders number at most holders - t < t.

In every case the client's own rule still holds: it reveals one kind of share per client
and only once, so with ``2t > holders`` the server never holds t shares of both secrets
of anyone.

Not covered: collaborators that collude with the aggregator (they sign any set and reveal
any share; Bonawitz et al., Section 6, analyse that case with larger thresholds), and
what the sum itself reveals, which is for differential privacy to bound.
"""

from bastion.privacy.secagg.client import ClientState, SecAggClient
from bastion.privacy.secagg.config import SecAggConfig, session_id_for
from bastion.privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    SharesForClient,
    SurvivorList,
    UnmaskingRequest,
    UnmaskingResponse,
)
from bastion.privacy.secagg.server import HeldSecrets, SecAggResult, SecAggServer, ServerState
from bastion.privacy.secagg.stats import ProtocolStats, Stage, StageStats

__all__ = [
    "AdvertiseKeys",
    "ClientState",
    "ConsistencySignature",
    "EncryptedShares",
    "HeldSecrets",
    "KeyRoster",
    "MaskedInput",
    "ProtocolStats",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "ServerState",
    "SharesForClient",
    "Stage",
    "StageStats",
    "SurvivorList",
    "UnmaskingRequest",
    "UnmaskingResponse",
    "session_id_for",
]
