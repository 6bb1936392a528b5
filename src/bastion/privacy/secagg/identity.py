"""Who signs a collaborator's round keys, and how its peers check the signature.

In a federation the identity is the collaborator's mTLS certificate: it signs its round
keys with the certificate's private key and advertises the certificate with them; a peer
accepts the keys only if the certificate chains to the federation's CA, is valid, has the
collaborator role and names the sender. The aggregator relays the certificate but cannot
forge one, so it cannot substitute keys. The in-process simulation has no PKI and uses
fresh Ed25519 keys held in memory (``simulated_identities``); the checks are the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bastion.errors import PKIError
from bastion.pki import Role, TLSFiles, load_certificate, load_private_key, verify_identity
from bastion.pki.pem import parse_certificate
from bastion.privacy.secagg.keys import IdentityPrivateKey, IdentityPublicKey, IdentityVerifier


@dataclass(frozen=True)
class SigningIdentity:
    """A collaborator's long-term signing key, the credential that vouches for it, and the
    verifier it applies to its peers' credentials."""

    private_key: IdentityPrivateKey
    credential: bytes
    verifier: IdentityVerifier


class CertificateVerifier:
    """Maps (name, advertised certificate) to the identity key, if the CA vouches for it."""

    def __init__(self, ca_certificate: x509.Certificate) -> None:
        self._ca = ca_certificate

    def __call__(self, name: str, credential: bytes) -> IdentityPublicKey:
        certificate = parse_certificate(
            credential, source=f"the certificate advertised for {name!r}"
        )
        identity = verify_identity(certificate, self._ca, Role.COLLABORATOR)
        if identity.name != name:
            raise PKIError(f"the certificate advertised for {name!r} belongs to {identity.name!r}")
        key = certificate.public_key()
        if not isinstance(
            key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise PKIError(
                f"{name!r}'s certificate holds a {type(key).__name__}, not a signing key"
            )
        return key


def identity_from_tls(files: TLSFiles) -> SigningIdentity:
    """The collaborator's mTLS key and certificate as its secure aggregation identity."""
    return SigningIdentity(
        private_key=load_private_key(files.key),
        credential=files.cert.read_bytes(),
        verifier=CertificateVerifier(load_certificate(files.ca)),
    )


def certificate_verifier(files: TLSFiles) -> CertificateVerifier:
    """The aggregator's check of advertised certificates (it refuses bad ones early)."""
    return CertificateVerifier(load_certificate(files.ca))


class _Directory:
    """The in-memory public keys of a simulated federation."""

    def __init__(self, keys: dict[str, ed25519.Ed25519PrivateKey]) -> None:
        self._public = {name: key.public_key() for name, key in keys.items()}

    def __call__(self, name: str, credential: bytes) -> IdentityPublicKey:
        try:
            return self._public[name]
        except KeyError:
            raise PKIError(f"{name!r} has no simulated identity") from None


def simulated_identities(
    names: Iterable[str],
) -> tuple[dict[str, SigningIdentity], IdentityVerifier]:
    """Fresh Ed25519 identities for an in-process simulation, and the verifier that knows them."""
    keys = {name: ed25519.Ed25519PrivateKey.generate() for name in names}
    directory = _Directory(keys)
    return {name: SigningIdentity(key, b"", directory) for name, key in keys.items()}, directory
