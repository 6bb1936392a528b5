"""Who answers at the aggregator's address: the aggregator the signed plan names, or not.

gRPC's client checks that the server's certificate comes from the federation's CA and
carries the dialled host name; it cannot say *which* member of the CA it is. Before it
asks for work, a collaborator shakes hands itself (the same mutual TLS), reads the
server's certificate and requires the aggregator role and ``network.aggregator_name``,
so another aggregator-role certificate of the same CA (a rogue aggregator) is refused.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from cryptography import x509

from bastion.errors import BastionError, PKIError
from bastion.pki import Role, identity_of
from bastion.pki.revocation import CrlWatch
from bastion.spec.network import Address


class WrongAggregator(BastionError):
    """The server's certificate is valid but not the aggregator the signed plan names."""


def server_certificate(
    address: Address, ca: bytes, cert: Path, key: Path, timeout: float = 10.0
) -> x509.Certificate:
    """The certificate the server at ``address`` presents in a mutual TLS handshake."""
    context = ssl.create_default_context(cadata=ca.decode("ascii"))
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection((address.host, address.port), timeout=timeout)
    with raw, context.wrap_socket(raw, server_hostname=address.host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise PKIError(f"{address.target} presented no certificate")
    return x509.load_der_x509_certificate(der)


def check_aggregator(
    certificate: x509.Certificate, expected: str, target: str, crl: CrlWatch | None = None
) -> None:
    """Raise ``WrongAggregator`` unless ``certificate`` is the aggregator named ``expected``
    (and, with ``crl``, not revoked)."""
    identity = identity_of(certificate)
    if crl is not None:
        try:
            crl.check(certificate, f"aggregator {identity.name!r} at {target}")
        except PKIError as exc:
            raise WrongAggregator(f"{exc}; refusing to work for it") from None
    if identity.role is not Role.AGGREGATOR or identity.name != expected:
        raise WrongAggregator(
            f"{target} presents the certificate of {identity}, but the signed plan names "
            f"aggregator {expected!r} (network.aggregator_name); refusing to work for it"
        )
