"""The audit log: JSON lines, each signed by the aggregator's key and chained to the last.

Every record is ``{"seq", "time", "kind", "data", "prev", "signer", "sig"}``: ``prev`` is
the SHA-256 of the previous record's signed body (64 zeros for the first), ``signer`` the
SHA-256 fingerprint of the certificate whose key signed it, ``sig`` the signature over the
canonical JSON of the rest. A ``signer`` record carries the certificate itself whenever
the signing key changes, so a verifier needs only the federation's CA certificate.
Flipping a byte, deleting, reordering or inserting a line breaks the chain or a signature;
truncation is caught against a head recorded elsewhere (a checkpoint, a receipt).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from bastion.errors import BastionError, PKIError
from bastion.pki import Role, certificate_fingerprint, identity_of, verify_identity
from bastion.pki.pem import load_certificate, load_private_key

GENESIS = "0" * 64
MAX_LINE_BYTES = 1 << 20


class AuditError(BastionError):
    """The audit log is broken, forged, truncated, or cannot be written."""


def canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def body_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of a record's signed body (everything but ``sig``)."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "sig"})).hexdigest()


def _sign(key: PrivateKeyTypes, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise AuditError(f"cannot sign the audit log with a {type(key).__name__}")


def _verify(public: PublicKeyTypes, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Signer:
    """The aggregator's key and certificate (its TLS identity) that sign the log."""

    key: PrivateKeyTypes
    certificate: x509.Certificate

    @classmethod
    def from_files(cls, cert: Path, key: Path) -> Signer:
        return cls(load_private_key(key), load_certificate(cert))

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(_sign(self.key, data)).decode("ascii")


@dataclass(frozen=True)
class Head:
    """Where a log stands: its last record's number and body hash."""

    seq: int
    hash: str


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each line; an unreadable line is an ``AuditError``."""
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if len(line) > MAX_LINE_BYTES:
                raise AuditError(f"{path}:{number}: line longer than {MAX_LINE_BYTES} bytes")
            if not line.endswith(b"\n"):
                raise AuditError(f"{path}:{number}: incomplete last line (torn write)")
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise AuditError(f"{path}:{number}: not a JSON record ({exc})") from None
            if not isinstance(record, dict) or canonical(record) + b"\n" != line:
                raise AuditError(f"{path}:{number}: not a canonical audit record")
            yield number, record


class AuditLog:
    """Appends signed, chained records to ``path`` (fsynced); resumes an existing log."""

    def __init__(self, path: Path, signer: Signer) -> None:
        self.path = Path(path)
        self._signer = signer
        self._lock = threading.Lock()
        self._head = Head(0, GENESIS)
        self._signer_fingerprint = ""
        if self.path.exists():
            self._drop_torn_tail()
            for _, record in read_records(self.path):
                self._head = Head(int(record["seq"]), body_hash(record))
                if record.get("kind") == "signer":
                    self._signer_fingerprint = str(record["signer"])
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _drop_torn_tail(self) -> None:
        """A crash inside an append can leave a last line without its newline: that record
        was never acknowledged, so it is cut off (any other damage is an error)."""
        with self.path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            end = size
            while end > 0:
                start = max(0, end - 65536)
                handle.seek(start)
                block = handle.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    handle.truncate(start + cut + 1)
                    return
                end = start
            handle.truncate(0)

    @property
    def head(self) -> Head:
        with self._lock:
            return self._head

    def append(self, kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Sign and append one record; returns it (as written)."""
        return self.append_all([(kind, data)])[0]

    def append_all(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """Sign and append several records, chained in order, with one write and one fsync;
        returns them (as written). A round's receipts go together: an fsync each was most
        of a round's close for a 1M-float32 model with 10 sites (11 of them, about 6.7 ms)."""
        with self._lock:
            head = self._head
            records: list[dict[str, Any]] = []
            if self._signer_fingerprint != self._signer.fingerprint:
                pem = self._signer.certificate.public_bytes(serialization.Encoding.PEM)
                head = self._signed(records, head, "signer", {"certificate": pem.decode("ascii")})
            for kind, data in entries:
                head = self._signed(records, head, kind, data)
            if not records:
                return []
            lines = memoryview(b"".join(canonical(record) + b"\n" for record in records))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                while lines:
                    lines = lines[os.write(fd, lines) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._head = head
            self._signer_fingerprint = self._signer.fingerprint
            return records[len(records) - len(entries) :]

    def _signed(
        self, records: list[dict[str, Any]], head: Head, kind: str, data: Mapping[str, Any]
    ) -> Head:
        """Append to ``records`` the signed record after ``head``; the new head."""
        record: dict[str, Any] = {
            "seq": head.seq + 1,
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "kind": kind,
            "data": dict(data),
            "prev": head.hash,
            "signer": self._signer.fingerprint,
        }
        record["sig"] = self._signer.sign(canonical(record))
        records.append(record)
        return Head(record["seq"], body_hash(record))


@dataclass(frozen=True)
class Verified:
    """A log that verified: its records, head and the signers' names."""

    records: list[dict[str, Any]]
    head: Head
    signers: tuple[str, ...]


def verify_log(path: Path, ca_cert: Path, aggregator: str | None = None) -> Verified:
    """Check every record's chain link and signature, and each signer's certificate
    against the CA (aggregator role; named ``aggregator`` when given)."""
    ca = load_certificate(ca_cert)
    keys: dict[str, PublicKeyTypes] = {}
    names: list[str] = []
    records: list[dict[str, Any]] = []
    head = Head(0, GENESIS)
    for number, record in read_records(path):
        where = f"{path}:{number}"
        if set(record) != {"seq", "time", "kind", "data", "prev", "signer", "sig"}:
            raise AuditError(f"{where}: not an audit record (fields {sorted(record)})")
        if record["seq"] != head.seq + 1:
            raise AuditError(
                f"{where}: record {record['seq']} follows {head.seq} (a line was removed, "
                "added or moved)"
            )
        if record["prev"] != head.hash:
            raise AuditError(f"{where}: record {record['seq']} does not chain to the one before")
        if record["kind"] == "signer":
            try:
                certificate = x509.load_pem_x509_certificate(
                    str(record["data"]["certificate"]).encode("ascii")
                )
                # Valid when it signed (a later expiry does not void the past).
                at = datetime.fromisoformat(str(record["time"]))
                verify_identity(certificate, ca, Role.AGGREGATOR, at=at)
            except (PKIError, ValueError, KeyError, TypeError) as exc:
                raise AuditError(f"{where}: signer certificate refused: {exc}") from None
            identity = identity_of(certificate)
            if aggregator is not None and identity.name != aggregator:
                raise AuditError(f"{where}: signed by {identity.name!r}, not {aggregator!r}")
            if certificate_fingerprint(certificate) != record["signer"]:
                raise AuditError(f"{where}: signer record names another certificate")
            keys[record["signer"]] = certificate.public_key()
            names.append(identity.name)
        public = keys.get(record["signer"])
        if public is None:
            raise AuditError(f"{where}: signed by a key the log never introduced")
        try:
            signature = base64.b64decode(str(record["sig"]), validate=True)
        except ValueError:
            raise AuditError(f"{where}: signature is not base64") from None
        body = canonical({k: v for k, v in record.items() if k != "sig"})
        if not _verify(public, signature, body):
            raise AuditError(f"{where}: bad signature on record {record['seq']}")
        head = Head(record["seq"], body_hash(record))
        records.append(record)
    if not records:
        raise AuditError(f"{path} holds no records")
    return Verified(records, head, tuple(dict.fromkeys(names)))


def check_receipt(receipt: Mapping[str, Any], verified: Verified) -> None:
    """A receipt (one signed record a site received) must be in the verified log as is."""
    seq = receipt.get("seq")
    if not isinstance(seq, int) or not 1 <= seq <= len(verified.records):
        raise AuditError(f"receipt {seq!r} is not in the log (it has {len(verified.records)})")
    if verified.records[seq - 1] != dict(receipt):
        raise AuditError(f"receipt {seq} differs from record {seq} of the log")
