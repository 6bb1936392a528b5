"""Checks on identity names and host names before they reach a certificate or a file name.

An identity name is both a certificate CN and a file name in the PKI directory, so it
is restricted to a portable alphabet and may not shadow the CA's own files.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from cryptography import x509

from bastion.errors import PKIError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED_NAMES = frozenset({"ca"})
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def validate_name(name: str) -> str:
    """Return ``name`` if it can be a CN and a file name, else a PKIError saying why."""
    if not NAME_PATTERN.fullmatch(name):
        raise PKIError(
            f"invalid identity name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'hospital-a')"
        )
    if name.lower() in _RESERVED_NAMES:
        raise PKIError(f"identity name {name!r} is reserved for the CA's own files; pick another")
    return name


def host_to_san(host: str) -> x509.GeneralName:
    """An IP address becomes an IPAddress SAN, anything else a validated DNSName SAN."""
    host = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PKIError(
            f"invalid host {host!r}: give an IP address (e.g. 127.0.0.1) or a DNS name "
            "(letters, digits and '-', dot-separated; no wildcards)"
        )
    return x509.DNSName(host.rstrip("."))


def hosts_to_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SANs for ``hosts`` in order, without duplicates."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        san = host_to_san(host)
        if san not in sans:
            sans.append(san)
    return sans


def san_to_host(san: x509.GeneralName) -> str:
    """The host string a DNS or IP SAN stands for (the inverse of :func:`host_to_san`)."""
    if isinstance(san, x509.IPAddress):
        return str(san.value)
    if isinstance(san, x509.DNSName):
        return san.value
    raise PKIError(
        f"subject alternative name {san!r} is not a DNS name or IP address; "
        "Bastion certificates carry host names only"
    )
