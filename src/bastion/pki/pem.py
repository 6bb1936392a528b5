"""Reading and writing PEM files, with errors that name the file and what is wrong with it.

Writes go through ``bastion.storage.atomic_write_bytes`` (temporary file, fsync, rename)
with the mode set explicitly, so a private key is never, even briefly, readable by anyone
but its owner.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from bastion.errors import PKIError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

#: Private keys Bastion can sign with and that gRPC (BoringSSL) accepts.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def fingerprint(der: bytes) -> str:
    """SHA-256 of DER bytes as colon-separated upper-case hex, the form ``openssl`` prints."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


def normalize_fingerprint(text: str) -> str:
    """Canonical form of a fingerprint typed by a person (any case, colons or spaces)."""
    digits = re.sub(r"[\s:]", "", text).upper()
    if not re.fullmatch(r"[0-9A-F]{64}", digits):
        raise PKIError(
            f"{text!r} is not a SHA-256 fingerprint: expected 64 hex digits, optionally "
            "colon-separated"
        )
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate's DER encoding."""
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _read(path: Path, what: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{what} {path} does not exist{hint}") from None
    except IsADirectoryError:
        raise PKIError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise PKIError(f"{what} {path} cannot be read: permission denied") from None


def _not_pem(path: Path | str, data: bytes, expected: str) -> PKIError:
    """The error for a file that does not hold the PEM block we expected."""
    match = _PEM_LABEL.search(data)
    if match is None:
        found = "no PEM block (is it DER or empty?)"
    elif match.group(1).decode() == expected:
        found = f"a malformed {expected} block"
    else:
        found = f"a {match.group(1).decode()} block"
    return PKIError(f"{path} is not a PEM {expected.lower()}: it holds {found}")


def parse_certificate(data: bytes, source: str = "certificate") -> x509.Certificate:
    """Parse PEM certificate bytes (e.g. a gRPC peer's); ``source`` names them in errors."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise _not_pem(source, data, "CERTIFICATE") from None


def load_certificate(path: str | os.PathLike[str], hint: str = "") -> x509.Certificate:
    """Load a PEM certificate; ``hint`` (which command makes it) ends a missing-file error."""
    path = Path(path)
    return parse_certificate(_read(path, "certificate", hint), str(path))


def load_csr(path: str | os.PathLike[str]) -> x509.CertificateSigningRequest:
    """Load a PEM certificate signing request."""
    path = Path(path)
    data = _read(path, "certificate request", "")
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise _not_pem(path, data, "CERTIFICATE REQUEST") from None


def load_private_key(
    path: str | os.PathLike[str],
    *,
    password: bytes | None = None,
    check_permissions: bool = True,
    hint: str = "",
) -> SigningKey:
    """Load a PEM private key, refusing one that others may read (like ``ssh`` does).

    Bastion writes keys with mode 0600; a group- or world-readable key may already have
    leaked, so it is refused unless ``check_permissions`` is False.
    """
    path = Path(path)
    data = _read(path, "private key", hint)
    if check_permissions and os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PKIError(
                f"private key {path} is accessible by other users (mode {mode:04o}); "
                f"run `chmod 600 {path}`"
            )
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        raise PKIError(
            f"private key {path} is encrypted: Bastion needs an unencrypted key "
            "protected by file permissions (0600)"
        ) from None
    except ValueError:
        raise _not_pem(path, data, "PRIVATE KEY") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PKIError(f"private key {path} is a {type(key).__name__}; use an ECDSA or RSA key")
    return key


def key_matches(key: SigningKey, cert: x509.Certificate) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key."""
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def private_key_pem(key: SigningKey) -> bytes:
    """Unencrypted PKCS#8 PEM, the form gRPC reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
