"""Simulated TDX and SEV-SNP evidence, for developing federations without CVM hardware.

TDX: the same simulated Intel-style hierarchy as SGX (`SimulatedHierarchy`) signs DCAP v4/v5
quotes with a TD report body, as Intel's TD quoting enclave would.  SNP: a local ARK (RSA,
RSASSA-PSS with SHA-384, as AMD's) signs an ASK, which signs a P-384 VCEK carrying AMD's TCB and
HWID extensions; the VCEK signs 1184-byte reports.  Every root says SIMULATED in its name and a
verifier trusts it only when the policy sets `allow_simulated` and it is handed that root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from bastion.tee.attestation.amd_roots import AmdProductRoot
from bastion.tee.attestation.errors import AttestationError
from bastion.tee.attestation.providers import Evidence
from bastion.tee.attestation.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    INTEL_QE_VENDOR_ID,
    QuoteHeader,
    ReportBody,
)
from bastion.tee.attestation.signatures import raw_public_key, sign_raw
from bastion.tee.attestation.simulated import SIMULATED_USER_DATA, SimulatedHierarchy
from bastion.tee.attestation.snp import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    POLICY_RESERVED_1,
    POLICY_SMT,
    REPORT_SIZE,
    SIGNED_SIZE,
    pack_cert_table,
)
from bastion.tee.attestation.tdx import (
    QUOTE_VERSION_4,
    TEE_TYPE_TDX,
    TdReportBody,
    pack_td_quote,
    signed_span,
)
from bastion.tee.attestation.tdx_verify import INTEL_TD_QE_ISV_PROD_ID, INTEL_TD_QE_MRSIGNER

logger = logging.getLogger(__name__)

SIMULATED_MRTD = hashlib.sha384(b"bastion simulated trust domain").digest()
SIMULATED_SNP_MEASUREMENT = hashlib.sha384(b"bastion simulated SEV-SNP guest").digest()
SIMULATED_TD_QE_MRENCLAVE = hashlib.sha256(b"bastion simulated TD quoting enclave").digest()
SIMULATED_CHIP_ID = hashlib.sha512(b"bastion simulated AMD chip").digest()
SIMULATED_SNP_TCB = {"bootloader": 9, "tee": 0, "snp": 23, "microcode": 213}
_QE_AUTH_DATA = bytes(range(32))
_AMD = "1.3.6.1.4.1.3704.1"
_SNP_FILES = {
    "ark": "snp-simulated-ark.pem",
    "ask": "snp-simulated-ask.pem",
    "vcek": "snp-simulated-vcek.pem",
    "vcek_key": "snp-simulated-vcek-key.pem",
}


def sign_td_quote(
    hierarchy: SimulatedHierarchy,
    body: TdReportBody,
    *,
    version: int = QUOTE_VERSION_4,
    qe_svn: int = 4,
) -> bytes:
    """A DCAP v4 (or v5) TD quote over `body`, signed as Intel's TD quoting enclave would."""
    attestation_public = raw_public_key(hierarchy.attestation_key.public_key())
    binding = hashlib.sha256(attestation_public + _QE_AUTH_DATA).digest()
    qe_report = ReportBody(
        mr_enclave=SIMULATED_TD_QE_MRENCLAVE,
        mr_signer=INTEL_TD_QE_MRSIGNER,
        isv_prod_id=INTEL_TD_QE_ISV_PROD_ID,
        isv_svn=qe_svn,
        report_data=binding + bytes(32),
        flags=0x11,
        xfrm=0xE7,
    )
    header = QuoteHeader(
        version=version,
        att_key_type=ATT_KEY_TYPE_ECDSA_P256,
        tee_type=TEE_TYPE_TDX,
        qe_svn=0,
        pce_svn=0,
        qe_vendor_id=INTEL_QE_VENDOR_ID,
        user_data=SIMULATED_USER_DATA,
    )
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in hierarchy.pck_chain)
    return pack_td_quote(
        header,
        body,
        signature=sign_raw(hierarchy.attestation_key, signed_span(header, body)),
        attestation_public_key=attestation_public,
        qe_report_body=qe_report,
        qe_report_signature=sign_raw(hierarchy.pck_key, qe_report.pack()),
        qe_auth_data=_QE_AUTH_DATA,
        certification_data=chain + b"\x00",
    )


class SimulatedTdxProvider:
    """Produces simulated TD quotes for a fixed MRTD (tests and demos only)."""

    def __init__(self, hierarchy: SimulatedHierarchy, *, mrtd: bytes = SIMULATED_MRTD) -> None:
        self.hierarchy = hierarchy
        self.mrtd = mrtd

    def quote(self, report_data: bytes) -> Evidence:
        body = TdReportBody(
            mrtd=self.mrtd,
            report_data=bytes(report_data),
            tee_tcb_svn=bytes([5, 1, 2]) + bytes(13),
            td_attributes=0x10000000,  # SEPT_VE_DISABLE, not DEBUG
            xfam=0x61AE7,
        )
        logger.warning("SIMULATED attestation: producing a TD quote without TDX hardware")
        return Evidence(kind="simulated-tdx", quote=sign_td_quote(self.hierarchy, body))


@dataclass(frozen=True)
class SimulatedSnpHierarchy:
    """A simulated ARK -> ASK -> VCEK chain and the VCEK's private key."""

    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey

    @property
    def root(self) -> AmdProductRoot:
        """What a verifier pins to trust this hierarchy's evidence (as product Milan)."""
        return AmdProductRoot("Milan", self.ark, self.ask)

    def sign_report(
        self,
        *,
        report_data: bytes,
        measurement: bytes = SIMULATED_SNP_MEASUREMENT,
        policy: int = POLICY_RESERVED_1 | POLICY_SMT,
        host_data: bytes = bytes(32),
        vmpl: int = 0,
        version: int = 2,
    ) -> bytes:
        """A report signed by the VCEK, followed by the certificate table (VCEK, ASK, ARK)."""
        tcb = _tcb_u64(SIMULATED_SNP_TCB)
        head = struct.pack(
            "<IIQ16s16sIIQQII64s48s32s48s48s32s32sQ24s64sQ4s4sQ",
            version,
            0,
            policy,
            bytes(16),
            bytes(16),
            vmpl,
            1,
            tcb,
            0,
            0,
            0,
            report_data,
            measurement,
            host_data,
            bytes(48),
            bytes(48),
            hashlib.sha256(report_data).digest(),
            bytes(32),
            tcb,
            bytes(24),
            SIMULATED_CHIP_ID,
            tcb,
            bytes(4),
            bytes(4),
            tcb,
        )
        signed = head.ljust(SIGNED_SIZE, b"\x00")
        r, s = decode_dss_signature(self.vcek_key.sign(signed, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(72, "little") + s.to_bytes(72, "little")
        report = (signed + signature).ljust(REPORT_SIZE, b"\x00")
        der = serialization.Encoding.DER
        table = pack_cert_table(
            {
                GUID_VCEK: self.vcek.public_bytes(der),
                GUID_ASK: self.ask.public_bytes(der),
                GUID_ARK: self.ark.public_bytes(der),
            }
        )
        return report + table

    def save(self, directory: Path) -> None:
        """Write the hierarchy (the VCEK's private key with mode 0600; the ARK's key is gone)."""
        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        for name in ("ark", "ask", "vcek"):
            _write(directory / _SNP_FILES[name], getattr(self, name).public_bytes(pem), 0o644)
        key = self.vcek_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write(directory / _SNP_FILES["vcek_key"], key, 0o600)

    @classmethod
    def load(cls, directory: Path) -> SimulatedSnpHierarchy:
        try:
            certs = [
                x509.load_pem_x509_certificate((directory / _SNP_FILES[n]).read_bytes())
                for n in ("ark", "ask", "vcek")
            ]
            key = serialization.load_pem_private_key(
                (directory / _SNP_FILES["vcek_key"]).read_bytes(), None
            )
        except (OSError, ValueError) as exc:
            raise AttestationError(
                f"cannot load the simulated SEV-SNP keys from {directory}: {exc}; create them "
                "with `bastion tee simulated-keys --kind snp`"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AttestationError(f"the simulated VCEK key in {directory} is not an EC key")
        return cls(certs[0], certs[1], certs[2], key)

    @staticmethod
    def present(directory: Path) -> bool:
        return all((directory / name).is_file() for name in _SNP_FILES.values())


class SimulatedSnpProvider:
    """Produces simulated SNP evidence for a fixed launch measurement (tests and demos only)."""

    def __init__(
        self, hierarchy: SimulatedSnpHierarchy, *, measurement: bytes = SIMULATED_SNP_MEASUREMENT
    ) -> None:
        self.hierarchy = hierarchy
        self.measurement = measurement

    def quote(self, report_data: bytes) -> Evidence:
        logger.warning("SIMULATED attestation: producing an SEV-SNP report without AMD hardware")
        evidence = self.hierarchy.sign_report(
            report_data=bytes(report_data), measurement=self.measurement
        )
        return Evidence(kind="simulated-snp", quote=evidence)


def build_simulated_snp_hierarchy(
    *, now: dt.datetime | None = None, validity: dt.timedelta = dt.timedelta(days=365)
) -> SimulatedSnpHierarchy:
    """A fresh simulated ARK -> ASK -> VCEK (RSA-PSS SHA-384 signatures, P-384 VCEK)."""
    start = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(minutes=5)
    end = start + validity
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark_name, ask_name = _name("SIMULATED ARK-Milan"), _name("SIMULATED SEV-Milan")
    ark = _cert(ark_name, ark_name, ark_key, ark_key.public_key(), start, end, ca=True)
    ask = _cert(ask_name, ark_name, ark_key, ask_key.public_key(), start, end, ca=True)
    extensions = [
        (f"{_AMD}.1", _der_int(0)),
        (f"{_AMD}.2", b"\x16\x08Milan-B0"),
        (f"{_AMD}.3.1", _der_int(SIMULATED_SNP_TCB["bootloader"])),
        (f"{_AMD}.3.2", _der_int(SIMULATED_SNP_TCB["tee"])),
        (f"{_AMD}.3.3", _der_int(SIMULATED_SNP_TCB["snp"])),
        (f"{_AMD}.3.8", _der_int(SIMULATED_SNP_TCB["microcode"])),
        (f"{_AMD}.4", SIMULATED_CHIP_ID),
    ]
    vcek = _cert(
        _name("SIMULATED SEV-VCEK"),
        ask_name,
        ask_key,
        vcek_key.public_key(),
        start,
        end,
        ca=False,
        extensions=extensions,
    )
    logger.warning("SIMULATED attestation: created a local SEV-SNP key hierarchy (no AMD CPU)")
    return SimulatedSnpHierarchy(ark, ask, vcek, vcek_key)


def _tcb_u64(tcb: dict[str, int]) -> int:
    raw = bytes([tcb["bootloader"], tcb["tee"], 0, 0, 0, 0, tcb["snp"], tcb["microcode"]])
    return int.from_bytes(raw, "little")


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bastion (simulation only)"),
        ]
    )


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: rsa.RSAPrivateKey,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    start: dt.datetime,
    end: dt.datetime,
    *,
    ca: bool,
    extensions: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for oid, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return builder.sign(key, hashes.SHA384(), rsa_padding=pss)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
