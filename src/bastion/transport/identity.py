"""Who is calling: the verified client certificate names the collaborator.

gRPC has already verified the chain to the federation's CA during the TLS handshake;
here we read the peer certificate it hands us and require the collaborator role. The
request body never names the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from cryptography import x509

from bastion.errors import PKIError
from bastion.pki import Role, identity_of
from bastion.pki.layout import TLSFiles
from bastion.pki.pem import parse_certificate
from bastion.pki.revocation import CrlWatch

log = logging.getLogger("bastion.transport")

Identify = Callable[[grpc.ServicerContext], str]

INSECURE_NAME_HEADER = "x-bastion-collaborator"


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate | None:
    """The caller's TLS certificate, as verified by the handshake; None in insecure mode."""
    pem = context.auth_context().get("x509_pem_cert")
    return parse_certificate(pem[0], source="peer certificate") if pem else None


def certificate_identity(context: grpc.ServicerContext) -> str:
    """The collaborator name in the caller's verified TLS certificate."""
    certificate = peer_certificate(context)
    if certificate is None:
        raise PKIError("the peer presented no client certificate")
    identity = identity_of(certificate)
    if identity.role is not Role.COLLABORATOR:
        raise PKIError(
            f"peer certificate belongs to {identity}; only collaborators may call the aggregator"
        )
    return identity.name


def revocation_checked(identify: Identify, crl: CrlWatch) -> Identify:
    """``identify``, then the caller's certificate against the current CRL (reloaded when it
    changes): a revoked or superseded certificate is refused on every call."""

    def checked(context: grpc.ServicerContext) -> str:
        name = identify(context)
        certificate = peer_certificate(context)
        if certificate is not None:
            crl.check(certificate, name)
        return name

    return checked


def reloading_server_credentials(files: TLSFiles) -> grpc.ServerCredentials:
    """Mutual TLS whose own certificate and trust anchor are read again when their files
    change, at the next handshake: a renewed certificate needs no restart."""

    def stamp() -> tuple[int, ...]:
        return tuple(
            p.stat().st_mtime_ns if p.exists() else 0 for p in (files.ca, files.cert, files.key)
        )

    def configuration() -> grpc.ServerCertificateConfiguration:
        ca, cert, key = files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    seen = [stamp()]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        now = stamp()
        if now == seen[0]:
            return None
        try:
            fresh = configuration()
        except (PKIError, OSError, ValueError) as exc:
            log.error("keeping the current server certificate: %s", exc)
            return None
        seen[0] = now
        log.info("server certificate reloaded from %s", files.cert)
        return fresh

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=True
    )


def insecure_identity(context: grpc.ServicerContext) -> str:
    """``--insecure`` only: the caller names itself in a header. Anyone can lie here."""
    for key, value in context.invocation_metadata():
        if key == INSECURE_NAME_HEADER:
            return str(value)
    raise PKIError(f"insecure mode: the request has no {INSECURE_NAME_HEADER} header")


def server_credentials(ca: bytes, cert: bytes, key: bytes) -> grpc.ServerCredentials:
    """Mutual TLS: the server demands and verifies a client certificate from our CA."""
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(ca: bytes, cert: bytes, key: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


INSECURE_WARNING = (
    "INSECURE MODE: plain-text gRPC without TLS. Updates, models and identities travel "
    "unprotected and any peer can claim any name. Never use this outside a throwaway test."
)
