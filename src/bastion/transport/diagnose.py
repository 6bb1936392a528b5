"""Why an aggregator cannot be reached, in one line a user can act on.

gRPC reports every failed dial as ``UNAVAILABLE`` with C-core internals
(``ssl_transport_security.cc``, ``TSI_PROTOCOL_FAILURE``). On such a failure the
collaborator looks for itself, step by step: does the name resolve, does anything
listen, does it speak TLS, does its certificate carry the name that was dialled and
come from this federation's CA.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import NamedTuple

from cryptography import x509
from cryptography.x509.oid import NameOID

from bastion.spec.network import Address


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for (its SAN, else CN)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [
            str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _matches(host: str, names: list[str]) -> bool:
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        wanted = None
    for name in names:
        if wanted is not None:
            try:
                if ipaddress.ip_address(name) == wanted:
                    return True
            except ValueError:
                continue
        elif name.lower() == host.lower() or (
            name.startswith("*.")
            and host.lower().endswith(name[1:].lower())
            and host.count(".") == name.count(".")
        ):
            return True
    return False


class Diagnosis(NamedTuple):
    """Why a dial failed; ``permanent`` when retrying cannot help (a wrong name, CA, protocol)."""

    reason: str
    permanent: bool = False


def explain_unreachable(address: Address, ca_pem: bytes | None, timeout: float = 5.0) -> Diagnosis:
    """Why ``address`` cannot be used as this federation's aggregator (empty: no idea)."""
    where = address.target
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return Diagnosis(
            f"cannot resolve the aggregator's host name {address.host!r} (dialled {where})"
        )
    try:
        raw = socket.create_connection((address.host, address.port), timeout=timeout)
    except ConnectionRefusedError:
        return Diagnosis(
            f"nothing is listening at {where} (connection refused): is the aggregator "
            "running, on this port?"
        )
    except TimeoutError:
        return Diagnosis(
            f"{where} does not answer within {timeout:.0f}s (a firewall, or the wrong host?)"
        )
    except OSError as exc:
        return Diagnosis(
            f"{where} is unreachable ({exc.strerror or exc}; resolved to {infos[0][4][0]})"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to read what it presents; gRPC verifies for real
    context.set_alpn_protocols(["h2"])
    try:
        with raw, context.wrap_socket(raw, server_hostname=address.host) as connection:
            der = connection.getpeercert(binary_form=True)
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, TimeoutError) as exc:
        # The peer went away mid-handshake: an aggregator killed, restarting or overloaded,
        # not one that speaks another protocol; retrying can help.
        return Diagnosis(
            f"{where} closed the connection during the TLS handshake "
            f"({exc.__class__.__name__}); is the aggregator restarting?"
        )
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        return Diagnosis(
            f"{where} does not speak TLS as an aggregator does ({reason}): is it another "
            "service, or an aggregator started with --insecure?",
            permanent=True,
        )
    if not der:
        return Diagnosis(f"{where} presented no certificate", permanent=True)
    certificate = x509.load_der_x509_certificate(der)
    names = certificate_names(certificate)
    if not _matches(address.host, names):
        return Diagnosis(
            f"TLS name mismatch: you dialled {address.host!r}, but the aggregator's certificate "
            f"is for {', '.join(repr(n) for n in names) or 'no names'}; dial one of those, or "
            f"reissue it with `bastion pki request aggregator --host {address.host}`",
            permanent=True,
        )
    if ca_pem is not None:
        ca = x509.load_pem_x509_certificate(ca_pem)
        if certificate.issuer != ca.subject:
            return Diagnosis(
                f"the server at {where} presents a certificate issued by "
                f"{certificate.issuer.rfc4514_string()!r}, not by this federation's CA "
                f"{ca.subject.rfc4514_string()!r}",
                permanent=True,
            )
    return Diagnosis("")
