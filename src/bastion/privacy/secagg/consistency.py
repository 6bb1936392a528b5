"""ConsistencyCheck (Bonawitz et al. 2017, Figure 4, round 3), with SecAgg+ neighbourhoods.

After the masked inputs the server announces U3, the clients whose masked input it got.
Each client in U3 checks it (``check_survivors``), signs (session, round, U3) with its
identity key, and the server forwards the signatures. Before Unmasking reveals anything,
a client verifies every forwarded signature against the certificates it checked at key
advertisement, over exactly the U3 it signed (``verified_signers``), and reveals a share
of a client o only if at least t of o's share holders signed that same U3
(``check_signers``). On the complete graph everyone holds everyone's shares, so this is
Bonawitz's "t valid signatures"; with SecAgg+ (Bell et al. 2020) the threshold counts in
the owner's neighbourhood, so the server forwards a client the signatures of its
neighbours' neighbours (``signers_needed_by``).

Why per owner: an honest client signs one U3 per session, and t > holders / 2, so two
different survivor sets can never both collect t signatures among the holders of one
client's shares. Every share of a client is therefore revealed under one survivor set,
the same for all who reveal it: the server cannot show some holders the client alive and
others its peers dropped. Counting in the revealer's own neighbourhood instead would let
the server show different sets in different parts of a SecAgg+ ring.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from bastion.privacy.errors import SecAggAborted
from bastion.privacy.secagg import keys
from bastion.privacy.secagg.config import SecAggConfig


def check_survivors(
    config: SecAggConfig,
    me: str,
    advertised: Collection[str],
    held: Collection[str],
    survivors: Sequence[str],
) -> frozenset[str]:
    """U3 as announced to ``me``, refused unless an honest server could have announced it.

    U3 must name each client once, only clients that advertised keys, ``me`` (we sent
    our masked input), only neighbours that shared keys with us (``held``), and at least
    t of our share holders (so at least t clients in all).
    """
    found = frozenset(survivors)
    if len(found) != len(survivors):
        raise SecAggAborted("the survivor set lists a client twice")
    strangers = found - set(advertised)
    if strangers:
        raise SecAggAborted(
            f"the survivor set names {sorted(strangers)[:5]}, who never advertised keys"
        )
    if me not in found:
        raise SecAggAborted(
            f"the server claims {me!r} sent no masked input, but it did: refusing to sign "
            "a survivor set without it (it would lead to revealing its pairwise key)"
        )
    unshared = (found & config.neighbours_of(me)) - set(held)
    if unshared:
        raise SecAggAborted(
            f"the server lists {sorted(unshared)[:5]} as survivors, but they never shared "
            f"keys with {me!r}"
        )
    surviving_holders = found & config.holders_of(me)
    if len(surviving_holders) < config.threshold:
        raise SecAggAborted(
            f"only {len(surviving_holders)} of {me!r}'s share holders sent masked input, "
            f"fewer than the threshold {config.threshold}: the round cannot finish"
        )
    return found


def verified_signers(
    config: SecAggConfig,
    survivors: frozenset[str],
    signatures: Mapping[str, bytes],
    identities: Mapping[str, keys.IdentityPublicKey],
) -> frozenset[str]:
    """Who signed ``survivors``; any signature that does not verify aborts the round.

    Only members of U3 were asked to sign, so a signature from anyone else, or one that
    is not over exactly this U3 of this session and round, is the server's forgery.
    """
    for signer in sorted(signatures):
        if signer not in survivors:
            raise SecAggAborted(
                f"the server forwarded a consistency signature from {signer!r}, who is not "
                "in the survivor set: refusing to reveal any share"
            )
        identity = identities.get(signer)
        if identity is None or not is_valid(
            config, survivors, signer, signatures[signer], identity
        ):
            raise SecAggAborted(
                f"the consistency signature forwarded for {signer!r} is not its identity "
                "key's signature over the survivor set we were told (another set, another "
                "session, or a forgery): the server shows clients different views; refusing "
                "to reveal any share"
            )
    return frozenset(signatures)


def is_valid(
    config: SecAggConfig,
    survivors: frozenset[str],
    signer: str,
    signature: bytes,
    identity: keys.IdentityPublicKey,
) -> bool:
    """Whether ``signature`` is ``signer``'s over ``survivors`` in this session and round."""
    payload = keys.consistency_payload(config.session_id, config.round_number, signer, survivors)
    return keys.verify(identity, signature, payload)


def check_signers(config: SecAggConfig, signers: frozenset[str], owners: Iterable[str]) -> None:
    """Abort unless, for each owner whose share we would reveal, t of its holders signed."""
    t = config.threshold
    for owner in sorted(owners):
        count = len(signers & config.holders_of(owner))
        if count < t:
            raise SecAggAborted(
                f"only {count} of {owner!r}'s share holders signed the survivor set we were "
                f"told, fewer than the threshold {t}: the server may be showing other "
                f"clients another set; refusing to reveal any share"
            )


def signers_needed_by(config: SecAggConfig, client: str) -> frozenset[str]:
    """Whose signatures ``client`` checks: the holders of every share it holds."""
    if config.neighbours is None:
        return frozenset(config.clients)
    needed: set[str] = set()
    for owner in config.holders_of(client):
        needed |= config.holders_of(owner)
    return frozenset(needed)
