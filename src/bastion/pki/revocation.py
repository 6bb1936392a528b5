"""Revocation and renewal: the CA's signed certificate revocation list (``ca.crl``).

``revoke`` lists a certificate (by serial, or every live certificate of a name) in a CRL
signed by the CA key (RFC 5280, built and verified with ``cryptography``). Identity is the
certificate, not the name alone: whenever the CA issues a name a new certificate (renewal,
re-keying) every older live serial of that name goes into the CRL as ``superseded``, so
the CN plus the CA's record of its current serial is what is accepted. ``CrlWatch``
is what services hold: it reloads the CRL when the file changes, verifies its signature
against the CA certificate, and refuses revoked certificates. The CRL is public: it
travels with the workspace's PKI folder (or from the director), never with a key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bastion.errors import PKIError
from bastion.pki.ca import load_ca
from bastion.pki.layout import PkiLayout
from bastion.pki.pem import PUBLIC_MODE, load_certificate, load_private_key
from bastion.pki.signing import sign_request
from bastion.pki.store import IssuedCert, list_issued
from bastion.storage.atomic import atomic_write_bytes

log = logging.getLogger("bastion.pki")

CRL_FILE = "ca.crl"
CRL_DAYS = 30

REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}


@dataclass(frozen=True)
class Revoked:
    serial: int
    reason: str
    when: datetime


def crl_path(pki_dir: str | os.PathLike[str]) -> Path:
    return Path(pki_dir) / CRL_FILE


def _reason_of(entry: x509.RevokedCertificate) -> str:
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return "unspecified"
    return next((name for name, value in REASONS.items() if value == flag), flag.value)


def load_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """The CRL at ``path``, refused unless the CA signed it."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise PKIError(f"{path} is not a PEM certificate revocation list: {exc}") from None
    public = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(public):  # type: ignore[arg-type]
        raise PKIError(f"{path} is not signed by the federation's CA")
    return crl


def revoked_entries(pki_dir: str | os.PathLike[str]) -> dict[int, Revoked]:
    """What the current CRL lists (empty without one)."""
    layout = PkiLayout.of(pki_dir)
    path = crl_path(pki_dir)
    if not path.is_file():
        return {}
    crl = load_crl(path, load_certificate(layout.ca_cert))
    return {
        e.serial_number: Revoked(e.serial_number, _reason_of(e), e.revocation_date_utc) for e in crl
    }


def _superseded(entries: list[IssuedCert], now: datetime) -> dict[int, Revoked]:
    """Every live serial of a name but its newest: the CA's record names the current one."""
    newest: dict[str, IssuedCert] = {}
    for entry in entries:  # oldest first
        newest[entry.name] = entry
    return {
        e.serial: Revoked(e.serial, "superseded", newest[e.name].not_before)
        for e in entries
        if e is not newest[e.name] and e.not_after > now
    }


def publish_crl(pki_dir: str | os.PathLike[str], add: dict[int, Revoked] | None = None) -> Path:
    """Sign and write ``ca.crl``: what it listed, superseded serials, and ``add``."""
    pki_dir = Path(pki_dir)
    ca = load_ca(pki_dir)
    now = datetime.now(timezone.utc)
    listed = {**revoked_entries(pki_dir), **_superseded(list_issued(pki_dir), now), **(add or {})}
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=CRL_DAYS))
    )
    for item in sorted(listed.values(), key=lambda r: r.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(item.serial)
            .revocation_date(item.when)
            .add_extension(x509.CRLReason(REASONS.get(item.reason, REASONS["unspecified"])), False)
            .build()
        )
    crl = builder.sign(ca.key, ca.hash_algorithm)
    path = crl_path(pki_dir)
    atomic_write_bytes(path, crl.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return path


def revoke(pki_dir: str | os.PathLike[str], target: str, reason: str) -> list[IssuedCert]:
    """Revoke ``target`` (a name: its live certificates; or a hex serial) and publish the CRL."""
    if reason not in REASONS:
        raise PKIError(f"unknown reason {reason!r}; one of {', '.join(REASONS)}")
    entries = list_issued(pki_dir)
    now = datetime.now(timezone.utc)
    chosen = [e for e in entries if e.name == target and e.not_after > now]
    if not chosen:
        try:
            serial = int(target.replace(":", ""), 16)
        except ValueError:
            serial = -1
        chosen = [e for e in entries if e.serial == serial]
    if not chosen:
        raise PKIError(
            f"{target!r} is neither a name with a live certificate nor a serial this CA "
            "issued (see `bastion pki list`)"
        )
    publish_crl(pki_dir, {e.serial: Revoked(e.serial, reason, now) for e in chosen})
    return chosen


class CrlWatch:
    """The current CRL for a service: reloaded when its file changes (checked at most every
    ``interval`` seconds), its signature verified each time; a revoked certificate raises."""

    def __init__(self, path: Path, ca_cert: Path, interval: float = 1.0) -> None:
        self.path = Path(path)
        self._ca = load_certificate(ca_cert)
        self._interval = interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self._revoked: dict[int, str] = {}
        self._digest = ""
        self._listeners: list[Callable[[str, dict[int, str]], None]] = []
        self.reloads = 0
        self._reload()

    def subscribe(self, listener: Callable[[str, dict[int, str]], None]) -> None:
        """Call ``listener(crl_sha256, {serial: reason})`` now and after every reload."""
        self._listeners.append(listener)
        listener(self._digest, dict(self._revoked))

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._revoked = None, {}
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            crl = load_crl(self.path, self._ca)
        except (PKIError, OSError) as exc:
            # Keep what was in force: a broken or forged CRL never un-revokes anyone.
            log.error("keeping the previous revocation list: %s", exc)
            return
        self._revoked = {e.serial_number: _reason_of(e) for e in crl}
        self._digest = hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).hexdigest()
        self._stamp = stamp
        self.reloads += 1
        log.info("revocation list %s loaded: %d revoked", self.path, len(self._revoked))
        for listener in self._listeners:
            listener(self._digest, dict(self._revoked))

    def refresh(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self._interval:
                self._checked = now
                self._reload()

    def check(self, certificate: x509.Certificate, who: str) -> None:
        """Raise ``PKIError`` if ``certificate`` is revoked."""
        self.refresh()
        reason = self._revoked.get(certificate.serial_number)
        if reason is not None:
            raise PKIError(
                f"the certificate of {who} (serial {certificate.serial_number:X}) is revoked "
                f"({reason})"
            )


def renew(
    pki_dir: str | os.PathLike[str],
    name: str,
    days: int = 365,
    csr: str | os.PathLike[str] | None = None,
) -> IssuedCert:
    """Issue ``name`` a new certificate before its current one expires: from its request
    ``csr`` (a new key), or else from the key it already holds in ``pki_dir`` (same key,
    same names). The old certificate is then superseded in the published CRL."""
    pki_dir = Path(pki_dir)
    live = [e for e in list_issued(pki_dir) if e.name == name]
    if not live:
        raise PKIError(f"{name!r} holds no certificate of this CA; use `bastion pki issue`")
    current = live[-1]
    if csr is None:
        layout = PkiLayout.of(pki_dir)
        if not layout.key(name).is_file():
            raise PKIError(
                f"no key {layout.key(name)} here: renew from the holder's request with --csr"
            )
        old = load_certificate(current.path)
        builder = x509.CertificateSigningRequestBuilder().subject_name(old.subject)
        try:
            sans = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
        except x509.ExtensionNotFound:
            pass
        key = load_private_key(layout.key(name))
        request = builder.sign(key, hashes.SHA256())
        csr = layout.csr(name)
        atomic_write_bytes(Path(csr), request.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    entry = sign_request(pki_dir, csr, current.role, days=days)
    publish_crl(pki_dir)
    return entry
