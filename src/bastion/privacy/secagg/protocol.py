"""Secure aggregation, Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020.

The four rounds, driven by the caller's transport (``SecAggServer`` and ``SecAggClient``
hold all state; the messages are plain dataclasses)::

    # server (aggregator)                         # client (each collaborator)
    server = SecAggServer(config)                   client = SecAggClient(name, config, key, verify)
    server.receive_advertise(name, msg)        <-   client.advertise_keys()
    roster = server.close_advertise()          ->   client.share_keys(roster)
    server.receive_shares(name, msg)           <-
    per_client = server.close_shares()         ->   client.masked_input(per_client[name], words)
    server.receive_masked_input(name, msg)     <-
    request = server.close_masked_inputs()     ->   client.unmask(request)
    server.receive_unmasking(name, msg)        <-
    result = server.finalize()                      # SecAggResult(total, contributors)

Bonawitz's optional consistency-check round is left out: with ``2t > holders``, a
server that tells different clients different stories about who dropped still cannot
gather t shares of both secrets of any client, because every client answers one
unmasking request, with one kind of share per client.
"""

from bastion.privacy.secagg.client import ClientState, SecAggClient
from bastion.privacy.secagg.config import SecAggConfig, session_id_for
from bastion.privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    SharesForClient,
    UnmaskingRequest,
    UnmaskingResponse,
)
from bastion.privacy.secagg.server import HeldSecrets, SecAggResult, SecAggServer, ServerState
from bastion.privacy.secagg.stats import ProtocolStats, Stage, StageStats

__all__ = [
    "AdvertiseKeys",
    "ClientState",
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
    "UnmaskingRequest",
    "UnmaskingResponse",
    "session_id_for",
]
