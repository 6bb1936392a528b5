"""The three roles a federation certificate can carry, and how each is encoded.

A role is written twice into every certificate Bastion issues: as the subject's
organizational unit (OU), which humans read, and as the extended key usage (EKU), which
TLS stacks enforce. :func:`bastion.pki.identity_of` requires both to agree.
"""

from __future__ import annotations

from enum import Enum

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from bastion.errors import PKIError


class Role(str, Enum):
    """Who holds a certificate; the value is what ``--role`` accepts and OU holds."""

    AGGREGATOR = "aggregator"
    COLLABORATOR = "collaborator"
    MODEL_OWNER = "model-owner"

    @classmethod
    def parse(cls, value: Role | str) -> Role:
        """The role named ``value``, or a PKIError listing the valid names."""
        if isinstance(value, Role):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(role.value for role in cls)
            raise PKIError(f"unknown role {value!r}: choose one of {choices}") from None

    @property
    def extended_key_usages(self) -> frozenset[ObjectIdentifier]:
        """The EKUs a certificate of this role carries, and no others."""
        return _EKUS[self]

    def __str__(self) -> str:
        return self.value


#: aggregator: TLS server for collaborators, and a TLS client (e.g. to a metrics sink
#: or a parent aggregator); collaborator: TLS client only, so its certificate cannot
#: impersonate a server; model owner: signs workspace manifests, and is a TLS client of a
#: federation service's director (submitting and controlling its jobs).
_EKUS: dict[Role, frozenset[ObjectIdentifier]] = {
    Role.AGGREGATOR: frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    Role.COLLABORATOR: frozenset({ExtendedKeyUsageOID.CLIENT_AUTH}),
    Role.MODEL_OWNER: frozenset(
        {ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.CLIENT_AUTH}
    ),
}

#: EKU sets issued before a role gained a usage: still that role (it signs, it cannot dial).
_EARLIER_EKUS: dict[Role, frozenset[ObjectIdentifier]] = {
    Role.MODEL_OWNER: frozenset({ExtendedKeyUsageOID.CODE_SIGNING}),
}


def role_accepts_usages(role: Role, usages: frozenset[ObjectIdentifier]) -> bool:
    """Whether ``usages`` is the EKU set of ``role`` (now or as issued earlier)."""
    return usages == _EKUS[role] or usages == _EARLIER_EKUS.get(role)


def role_for_usages(usages: frozenset[ObjectIdentifier]) -> Role | None:
    """The role whose EKU set is exactly ``usages``, or None when none matches."""
    for role in Role:
        if role_accepts_usages(role, usages):
            return role
    return None
