"""A local stand-in for Intel's attestation hierarchy, for federations without SGX hardware.

It mirrors the real one: a root CA signs an intermediate, which signs a PCK certificate; the PCK
key signs a quoting-enclave report vouching for an attestation key; the attestation key signs
quotes.  The root's name says SIMULATED, and a verifier trusts it only when its policy sets
`allow_simulated` and it is handed this root explicitly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.tee.attestation.errors import AttestationError
from bastion.tee.attestation.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    INTEL_QE_ISV_PROD_ID,
    INTEL_QE_MRSIGNER,
    INTEL_QE_VENDOR_ID,
    QUOTE_VERSION_3,
    TEE_TYPE_SGX,
    QuoteHeader,
    ReportBody,
    pack_quote,
)
from bastion.tee.attestation.signatures import raw_public_key, sign_raw

logger = logging.getLogger(__name__)

SIMULATED_ROOT_NAME = "Bastion SIMULATED SGX Root CA"
SIMULATED_USER_DATA = b"BASTION-SIMULATED".ljust(20, b"\x00")
SIMULATED_QE_MRENCLAVE = hashlib.sha256(b"bastion simulated quoting enclave").digest()
_QE_AUTH_DATA = bytes(range(32))
_QE_FLAGS = 0x15  # INIT | MODE64BIT | PROVISIONKEY, as a real QE3 report carries
_FILES = {
    "root": "simulated-root-ca.pem",
    "chain": "pck-chain.pem",
    "pck_key": "pck-key.pem",
    "attestation_key": "attestation-key.pem",
}


@dataclass(frozen=True)
class SimulatedHierarchy:
    """Keys and certificates that sign simulated quotes; the root's private key is discarded."""

    root_certificate: x509.Certificate
    pck_chain: tuple[x509.Certificate, ...]
    pck_key: ec.EllipticCurvePrivateKey
    attestation_key: ec.EllipticCurvePrivateKey

    def sign_quote(self, report_body: ReportBody, *, qe_svn: int = 8, pce_svn: int = 13) -> bytes:
        """A DCAP v3 quote over `report_body`, signed as Intel's quoting enclave would."""
        attestation_public = raw_public_key(self.attestation_key.public_key())
        binding = hashlib.sha256(attestation_public + _QE_AUTH_DATA).digest()
        qe_report = ReportBody(
            mr_enclave=SIMULATED_QE_MRENCLAVE,
            mr_signer=INTEL_QE_MRSIGNER,
            isv_prod_id=INTEL_QE_ISV_PROD_ID,
            isv_svn=qe_svn,
            report_data=binding + bytes(32),
            flags=_QE_FLAGS,
            xfrm=0x7,
        )
        header = QuoteHeader(
            version=QUOTE_VERSION_3,
            att_key_type=ATT_KEY_TYPE_ECDSA_P256,
            tee_type=TEE_TYPE_SGX,
            qe_svn=qe_svn,
            pce_svn=pce_svn,
            qe_vendor_id=INTEL_QE_VENDOR_ID,
            user_data=SIMULATED_USER_DATA,
        )
        signed = header.pack() + report_body.pack()
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.pck_chain)
        return pack_quote(
            header,
            report_body,
            signature=sign_raw(self.attestation_key, signed),
            attestation_public_key=attestation_public,
            qe_report_body=qe_report,
            qe_report_signature=sign_raw(self.pck_key, qe_report.pack()),
            qe_auth_data=_QE_AUTH_DATA,
            certification_data=chain_pem + b"\x00",
        )

    def save(self, directory: Path) -> None:
        """Write the hierarchy to `directory` (private keys with mode 0600)."""
        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        _write(directory / _FILES["root"], self.root_certificate.public_bytes(pem), 0o644)
        chain = b"".join(c.public_bytes(pem) for c in self.pck_chain)
        _write(directory / _FILES["chain"], chain, 0o644)
        for name, key in (("pck_key", self.pck_key), ("attestation_key", self.attestation_key)):
            data = key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write(directory / _FILES[name], data, 0o600)

    @classmethod
    def load(cls, directory: Path) -> SimulatedHierarchy:
        """Read a hierarchy written by `save`."""
        try:
            root = x509.load_pem_x509_certificate((directory / _FILES["root"]).read_bytes())
            chain = x509.load_pem_x509_certificates((directory / _FILES["chain"]).read_bytes())
            keys = [
                serialization.load_pem_private_key((directory / _FILES[n]).read_bytes(), None)
                for n in ("pck_key", "attestation_key")
            ]
        except (OSError, ValueError) as exc:
            raise AttestationError(
                f"cannot load the simulated attestation hierarchy from {directory}: {exc}; "
                "create it with build_simulated_hierarchy().save(directory)"
            ) from exc
        pck_key, attestation_key = keys
        if not isinstance(pck_key, ec.EllipticCurvePrivateKey) or not isinstance(
            attestation_key, ec.EllipticCurvePrivateKey
        ):
            raise AttestationError(f"the simulated hierarchy in {directory} holds non-EC keys")
        return cls(root, tuple(chain), pck_key, attestation_key)


def build_simulated_hierarchy(
    *, now: dt.datetime | None = None, validity: dt.timedelta = dt.timedelta(days=365)
) -> SimulatedHierarchy:
    """Create a fresh simulated root -> PCK CA -> PCK certificate, plus an attestation key."""
    start = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(minutes=5)
    end = start + validity
    root_key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    pck_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(SIMULATED_ROOT_NAME)
    ca_name = _name("Bastion SIMULATED SGX PCK Processor CA")
    root = _certificate(root_name, root_name, root_key, root_key.public_key(), start, end, 1)
    ca = _certificate(ca_name, root_name, root_key, ca_key.public_key(), start, end, 0)
    leaf = _certificate(
        _name("Bastion SIMULATED SGX PCK Certificate"),
        ca_name,
        ca_key,
        pck_key.public_key(),
        start,
        end,
        None,
    )
    logger.warning("SIMULATED attestation: created a local key hierarchy (no SGX hardware)")
    return SimulatedHierarchy(
        root_certificate=root,
        pck_chain=(leaf, ca, root),
        pck_key=pck_key,
        attestation_key=ec.generate_private_key(ec.SECP256R1()),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bastion (simulation only)"),
        ]
    )


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    signing_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    start: dt.datetime,
    end: dt.datetime,
    path_length: int | None,
) -> x509.Certificate:
    is_ca = path_length is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(signing_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
