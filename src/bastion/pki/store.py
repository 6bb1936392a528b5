"""``issued.json``: the CA's record of every certificate it signed.

The record lets the operator see who holds a certificate, until when, and by which
fingerprint, without trusting whatever ``.crt`` files happen to lie around.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from bastion.errors import PKIError
from bastion.pki.layout import PkiLayout
from bastion.pki.pem import PUBLIC_MODE, certificate_fingerprint, load_certificate
from bastion.pki.roles import Role
from bastion.storage.atomic import atomic_write_bytes

REGISTRY_VERSION = 1


@dataclass(frozen=True)
class IssuedCert:
    """One entry of ``issued.json``; ``path`` is where the CA wrote the certificate."""

    name: str
    role: Role
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str
    path: Path

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:X}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "serial": self.serial_hex,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "sha256": self.fingerprint,
            "certificate": self.path.name,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], root: Path) -> IssuedCert:
        return cls(
            name=str(entry["name"]),
            role=Role.parse(entry["role"]),
            serial=int(entry["serial"], 16),
            not_before=datetime.fromisoformat(entry["not_before"]),
            not_after=datetime.fromisoformat(entry["not_after"]),
            fingerprint=str(entry["sha256"]),
            path=root / str(entry["certificate"]),
        )

    @classmethod
    def of(cls, cert: x509.Certificate, name: str, role: Role, path: Path) -> IssuedCert:
        return cls(
            name=name,
            role=role,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint=certificate_fingerprint(cert),
            path=path,
        )


def _ca_fingerprint(layout: PkiLayout) -> str:
    return certificate_fingerprint(load_certificate(layout.ca_cert))


def _load(layout: PkiLayout) -> tuple[str | None, list[IssuedCert]]:
    """(CA fingerprint the registry belongs to, entries); empty when there is no registry."""
    path = layout.registry
    if not path.exists():
        return None, []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = [IssuedCert.from_json(entry, layout.root) for entry in document["issued"]]
        return document.get("ca_sha256"), entries
    except (ValueError, KeyError, TypeError, PKIError) as exc:
        raise PKIError(
            f"registry {path} is corrupt ({type(exc).__name__}: {exc}); restore it from a "
            "backup, or rebuild it by re-signing the requests"
        ) from None


def _save(layout: PkiLayout, entries: list[IssuedCert]) -> None:
    document = {
        "version": REGISTRY_VERSION,
        "ca_sha256": _ca_fingerprint(layout),
        "issued": [entry.to_json() for entry in entries],
    }
    text = json.dumps(document, indent=2) + "\n"
    atomic_write_bytes(layout.registry, text.encode("utf-8"), PUBLIC_MODE)


def reset_registry(pki_dir: str | os.PathLike[str]) -> None:
    """Start an empty registry for a new CA (certificates of an old CA are void)."""
    _save(PkiLayout.of(pki_dir), [])


def record_issued(pki_dir: str | os.PathLike[str], entry: IssuedCert) -> None:
    """Append ``entry`` to the registry."""
    layout = PkiLayout.of(pki_dir)
    _, entries = _load(layout)
    _save(layout, [*entries, entry])


def list_issued(pki_dir: str | os.PathLike[str]) -> list[IssuedCert]:
    """Every certificate this CA issued, oldest first (``bastion pki list``)."""
    layout = PkiLayout.of(pki_dir)
    if not layout.ca_cert.is_file():
        raise PKIError(
            f"no CA in {layout.root} (ca.crt is missing): run "
            f"`bastion pki init --pki-dir {layout.root}` first"
        )
    owner, entries = _load(layout)
    if owner is not None and owner != _ca_fingerprint(layout):
        raise PKIError(
            f"registry {layout.registry} belongs to a different CA than {layout.ca_cert}; "
            "it was not reset when the CA was replaced"
        )
    return entries
