"""The certificate an aggregator endpoint really presents in its TLS handshake.

gRPC's Python client does not expose the server's certificate, so attestation binds
to it through a separate mutual-TLS handshake with the same credentials: the
certificate the aggregator claims in its evidence must be the one its endpoint presents.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

from bastion.errors import BastionError
from bastion.pki import TLSFiles


def presented_certificate(target: str, tls: TLSFiles, timeout: float = 10.0) -> x509.Certificate:
    """Handshake with ``target`` (HOST:PORT) as our own identity and return its certificate."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # chain is verified below; the name is checked by gRPC itself
    context.load_verify_locations(cafile=str(tls.ca))
    ca, cert, key = tls.read()
    with tempfile.TemporaryDirectory() as private:
        key_file = Path(private) / "key.pem"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        context.load_cert_chain(certfile=str(tls.cert), keyfile=str(key_file))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as connection,
        ):
            der = connection.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise BastionError(
            f"cannot read the certificate aggregator {target} presents: {exc}"
        ) from None
    if der is None:
        raise BastionError(f"aggregator {target} presented no certificate")
    return x509.load_der_x509_certificate(der)
