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

Threat model. The guarantee is against an honest-but-curious aggregator: it runs the
protocol and studies everything it receives, and learns the survivors' sum and nothing
else. Clients also catch these active deviations and abort: substituted keys (each
client's keys are signed with its mTLS identity key), forged or redirected shares (AEAD
bound to sender, recipient, session and round), replayed sessions, a request for both
secrets of one client or for a client's own key share. With ``2t > holders``, lying about
who dropped cannot yield t shares of both secrets of one client, because every client
answers one unmasking request with one kind of share per client.

Not covered: an actively malicious aggregator that forwards a victim the shares of only
``t - 1`` peers and later declares exactly those peers dropped gets the victim's self-mask
seed and those peers' keys, which together unmask the victim's input. Bonawitz's
consistency-check round (left out here) does not stop that either; it needs checks such
as share holders verifying the victim's signed list of mask peers before they reveal
anything. Run secure aggregation against an aggregator you trust to follow the protocol.
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
