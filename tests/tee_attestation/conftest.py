"""A test SGX PKI built here with `cryptography`, and DCAP v3 quotes packed here with `struct`.

Nothing in this file uses bastion's quote packer or simulated hierarchy: the layout is written
out again from Intel's documented structures, so parser and tests cannot share a mistake.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from bastion.tee.attestation import Collateral

HEADER_FORMAT = "<HHIHH16s20s"  # sgx_quote_header_t
BODY_FORMAT = "<16sI12s16sQQ32s32s32s32s64sHHH42s16s64s"  # sgx_report_body_t
INTEL_VENDOR = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
INTEL_QE_SIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
MRENCLAVE = bytes.fromhex("aa" * 32)
MRSIGNER = bytes.fromhex("bb" * 32)
FMSPC = bytes.fromhex("00906ed50000")
TCB_COMPONENTS = (20, 20, 2, 4, 1, 128, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0)
PCE_SVN = 13
QE_AUTH = bytes(range(32))
SGX_OID = "1.2.840.113741.1.13.1"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def pack_body(
    *,
    mr_enclave: bytes = MRENCLAVE,
    mr_signer: bytes = MRSIGNER,
    isv_prod_id: int = 7,
    isv_svn: int = 3,
    report_data: bytes = bytes(64),
    flags: int = 0x5,
    misc_select: int = 0,
) -> bytes:
    return struct.pack(
        BODY_FORMAT,
        bytes(range(16)),  # cpu_svn
        misc_select,
        b"",  # reserved1
        b"",  # isv_ext_prod_id
        flags,
        0x7,  # xfrm
        mr_enclave,
        b"",  # reserved2
        mr_signer,
        b"",  # reserved3
        b"",  # config_id
        isv_prod_id,
        isv_svn,
        0,  # config_svn
        b"",  # reserved4
        b"",  # isv_family_id
        report_data,
    )


# --- a tiny DER encoder, for the PCK certificate's SGX extension -----------------------------


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return _der(0x06, bytes(out))


def der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def der_octets(value: bytes) -> bytes:
    return _der(0x04, value)


def sgx_extension(fmspc: bytes, components: tuple[int, ...], pce_svn: int) -> bytes:
    tcb = [
        der_seq(der_oid(f"{SGX_OID}.2.{i + 1}"), der_int(svn)) for i, svn in enumerate(components)
    ]
    tcb.append(der_seq(der_oid(f"{SGX_OID}.2.17"), der_int(pce_svn)))
    tcb.append(der_seq(der_oid(f"{SGX_OID}.2.18"), der_octets(bytes(components))))
    return der_seq(
        der_seq(der_oid(f"{SGX_OID}.1"), der_octets(bytes(16))),
        der_seq(der_oid(f"{SGX_OID}.2"), der_seq(*tcb)),
        der_seq(der_oid(f"{SGX_OID}.3"), der_octets(b"\x00\x00")),
        der_seq(der_oid(f"{SGX_OID}.4"), der_octets(fmspc)),
        der_seq(der_oid(f"{SGX_OID}.5"), _der(0x0A, b"\x00")),
    )


# --- certificates ------------------------------------------------------------------------------


def name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Corporation"),
        ]
    )


def issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: dt.datetime = NOW - dt.timedelta(days=1),
    not_after: dt.datetime = NOW + dt.timedelta(days=30),
    extension: bytes | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), extension), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class SgxTestPki:
    """Root -> PCK Processor CA -> PCK certificate, a QE attestation key, a TCB signer.

    Layout constants and packers hang off the instance so that tests need not import this
    file (pytest's importlib mode cannot).
    """

    HEADER_FORMAT = HEADER_FORMAT
    BODY_FORMAT = BODY_FORMAT
    MRENCLAVE = MRENCLAVE
    MRSIGNER = MRSIGNER
    INTEL_VENDOR = INTEL_VENDOR
    INTEL_QE_SIGNER = INTEL_QE_SIGNER
    FMSPC = FMSPC
    TCB_COMPONENTS = TCB_COMPONENTS
    PCE_SVN = PCE_SVN
    QE_AUTH = QE_AUTH
    pack_body = staticmethod(pack_body)
    issue = staticmethod(issue)
    pem = staticmethod(pem)
    new_key = staticmethod(new_key)
    raw_point = staticmethod(raw_point)
    raw_signature = staticmethod(raw_signature)
    sgx_extension = staticmethod(sgx_extension)

    root_key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    pck_key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    attestation_key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    tcb_key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    now: dt.datetime = NOW

    def __post_init__(self) -> None:
        self.root = issue(
            "Test SGX Root CA", self.root_key, "Test SGX Root CA", self.root_key, ca=True
        )
        self.ca = issue(
            "Test SGX PCK Processor CA", self.ca_key, "Test SGX Root CA", self.root_key, ca=True
        )
        self.pck = issue(
            "Test SGX PCK Certificate",
            self.pck_key,
            "Test SGX PCK Processor CA",
            self.ca_key,
            ca=False,
            extension=sgx_extension(FMSPC, TCB_COMPONENTS, PCE_SVN),
        )
        self.tcb_signer = issue(
            "Test SGX TCB Signing", self.tcb_key, "Test SGX Root CA", self.root_key, ca=False
        )

    def quote(
        self,
        *,
        body: bytes | None = None,
        version: int = 3,
        vendor: bytes = INTEL_VENDOR,
        attestation_key: ec.EllipticCurvePrivateKey | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
        qe_signing_key: ec.EllipticCurvePrivateKey | None = None,
        qe_report_data: bytes | None = None,
        qe_signer: bytes = INTEL_QE_SIGNER,
        qe_isv_svn: int = 8,
        chain: bytes | None = None,
        cert_type: int = 5,
        **body_fields: Any,
    ) -> bytes:
        """A DCAP v3 quote, packed field by field; each knob breaks one link on purpose."""
        header = struct.pack(HEADER_FORMAT, version, 2, 0, 8, 13, vendor, bytes(20))
        report = body if body is not None else pack_body(**body_fields)
        att_key = attestation_key or self.attestation_key
        att_public = raw_point(att_key)
        binding = hashlib.sha256(att_public + QE_AUTH).digest() + bytes(32)
        qe_report = pack_body(
            mr_enclave=bytes(32),
            mr_signer=qe_signer,
            isv_prod_id=1,
            isv_svn=qe_isv_svn,
            report_data=qe_report_data if qe_report_data is not None else binding,
            flags=0x15,
        )
        certification = chain if chain is not None else pem(self.pck, self.ca, self.root) + b"\0"
        signature_data = (
            raw_signature(signing_key or att_key, header + report)
            + att_public
            + qe_report
            + raw_signature(qe_signing_key or self.pck_key, qe_report)
            + struct.pack("<H", len(QE_AUTH))
            + QE_AUTH
            + struct.pack("<HI", cert_type, len(certification))
            + certification
        )
        return header + report + struct.pack("<I", len(signature_data)) + signature_data

    # --- collateral -------------------------------------------------------------------------

    def signed_json(
        self, key: str, value: dict[str, Any], *, signer: ec.EllipticCurvePrivateKey | None = None
    ) -> bytes:
        raw = json.dumps(value, separators=(",", ":"))
        signature = raw_signature(signer or self.tcb_key, raw.encode()).hex()
        return f'{{"{key}":{raw},"signature":"{signature}"}}'.encode()

    def tcb_info(
        self, levels: list[tuple[tuple[int, ...], int, str]], **overrides: Any
    ) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": "SGX",
            "version": 3,
            "issueDate": (self.now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": (self.now + dt.timedelta(days=29)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fmspc": FMSPC.hex().upper(),
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tcbLevels": [
                {
                    "tcb": {
                        "sgxtcbcomponents": [{"svn": svn} for svn in components],
                        "pcesvn": pce_svn,
                    },
                    "tcbDate": "2024-03-13T00:00:00Z",
                    "tcbStatus": status,
                    "advisoryIDs": [] if status == "UpToDate" else ["INTEL-SA-00000"],
                }
                for components, pce_svn, status in levels
            ],
        }
        value.update(overrides)
        return value

    def qe_identity(self, **overrides: Any) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": "QE",
            "version": 2,
            "issueDate": (self.now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": (self.now + dt.timedelta(days=29)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": INTEL_QE_SIGNER.hex().upper(),
            "isvprodid": 1,
            "tcbLevels": [
                {"tcb": {"isvsvn": 8}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
                {"tcb": {"isvsvn": 6}, "tcbDate": "2021-11-10T00:00:00Z", "tcbStatus": "OutOfDate"},
            ],
        }
        value.update(overrides)
        return value

    def collateral(
        self,
        *,
        levels: tuple[tuple[tuple[int, ...], int, str], ...] = (
            (TCB_COMPONENTS, PCE_SVN, "UpToDate"),
        ),
        tcb: dict[str, Any] | None = None,
        qe: dict[str, Any] | None = None,
        **changes: Any,
    ) -> Collateral:
        """Intel-format collateral for this PKI's platform; `changes` replace whole fields."""
        values: dict[str, Any] = {
            "tcb_info": self.signed_json("tcbInfo", tcb or self.tcb_info(list(levels))),
            "tcb_info_issuer_chain": (self.tcb_signer, self.root),
            "qe_identity": self.signed_json("enclaveIdentity", qe or self.qe_identity()),
            "qe_identity_issuer_chain": (self.tcb_signer, self.root),
            "pck_crl": self.crl(self.ca, self.ca_key),
            "root_ca_crl": self.crl(self.root, self.root_key),
        }
        values.update(changes)
        return Collateral(**values)

    def crl(
        self,
        issuer: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        revoked: tuple[x509.Certificate, ...] = (),
        *,
        next_update: dt.datetime | None = None,
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(self.now - dt.timedelta(hours=1))
            .next_update(next_update or self.now + dt.timedelta(days=7))
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
        )
        for certificate in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(certificate.serial_number)
                .revocation_date(self.now - dt.timedelta(hours=2))
                .build()
            )
        return builder.sign(key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki() -> SgxTestPki:
    return SgxTestPki()


@pytest.fixture(scope="session")
def other_pki() -> SgxTestPki:
    """A second, unrelated PKI: its root is not the one the verifier pins."""
    return SgxTestPki()


# --- Intel TDX: DCAP v4/v5 TD quotes, packed here from Intel's sgx_quote_4.h / sgx_quote_5.h ----

TD_QE_SIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
TD10_FORMAT = "<16s48s48sQQQ48s48s48s48s48s48s48s48s64s"  # sgx_report2_body_t (TD 1.0)
MRTD = bytes.fromhex("11" * 48)
RTMRS = tuple(bytes([0x20 + i]) * 48 for i in range(4))
TEE_TCB_SVN = bytes([5, 1, 2]) + bytes(13)


def pack_td_body(
    *,
    mrtd: bytes = MRTD,
    rtmrs: tuple[bytes, ...] = RTMRS,
    report_data: bytes = bytes(64),
    td_attributes: int = 0x10000000,
    xfam: int = 0x61AE7,
    tee_tcb_svn: bytes = TEE_TCB_SVN,
    mrsignerseam: bytes = bytes(48),
    seam_attributes: int = 0,
    td15: bool = False,
    tee_tcb_svn2: bytes | None = None,
    mrservicetd: bytes = bytes(48),
) -> bytes:
    body = struct.pack(
        TD10_FORMAT,
        tee_tcb_svn,
        b"\x5e" * 48,  # MRSEAM
        mrsignerseam,
        seam_attributes,
        td_attributes,
        xfam,
        mrtd,
        bytes(48),
        bytes(48),
        bytes(48),
        *rtmrs,
        report_data,
    )
    if td15:
        body += (tee_tcb_svn2 or tee_tcb_svn) + mrservicetd  # TEE_TCB_SVN_2, MRSERVICETD
    return body


def _td_quote(
    self: SgxTestPki,
    *,
    version: int = 4,
    td15: bool = False,
    body: bytes | None = None,
    attestation_key: ec.EllipticCurvePrivateKey | None = None,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
    qe_signing_key: ec.EllipticCurvePrivateKey | None = None,
    qe_report_data: bytes | None = None,
    qe_signer: bytes = TD_QE_SIGNER,
    qe_isv_svn: int = 4,
    chain: bytes | None = None,
    **body_fields: Any,
) -> bytes:
    """A TD quote v4 or v5 (TD 1.0 or 1.5 body), each knob breaking one link on purpose."""
    header = struct.pack(HEADER_FORMAT, version, 2, 0x81, 0, 0, INTEL_VENDOR, bytes(20))
    report = body if body is not None else pack_td_body(td15=td15, **body_fields)
    signed = header + report
    if version == 5:
        signed = header + struct.pack("<HI", 3 if td15 else 2, len(report)) + report
    att_key = attestation_key or self.attestation_key
    att_public = raw_point(att_key)
    binding = hashlib.sha256(att_public + QE_AUTH).digest() + bytes(32)
    qe_report = pack_body(
        mr_enclave=bytes(32),
        mr_signer=qe_signer,
        isv_prod_id=2,
        isv_svn=qe_isv_svn,
        report_data=qe_report_data if qe_report_data is not None else binding,
        flags=0x11,
    )
    certification = chain if chain is not None else pem(self.pck, self.ca, self.root) + b"\0"
    inner = (
        qe_report
        + raw_signature(qe_signing_key or self.pck_key, qe_report)
        + struct.pack("<H", len(QE_AUTH))
        + QE_AUTH
        + struct.pack("<HI", 5, len(certification))
        + certification
    )
    signature_data = (
        raw_signature(signing_key or att_key, signed)
        + att_public
        + struct.pack("<HI", 6, len(inner))
        + inner
    )
    return signed + struct.pack("<I", len(signature_data)) + signature_data


def _tdx_tcb_info(
    self: SgxTestPki,
    levels: list[tuple[tuple[int, ...], str]] | None = None,
    module_levels: list[tuple[int, str]] | None = None,
) -> dict[str, Any]:
    """TDX TCB info v3: SGX components as the PCK's, `levels` of (tdxtcbcomponents, status)."""
    value = self.tcb_info([(TCB_COMPONENTS, PCE_SVN, "UpToDate")], id="TDX")
    value["tdxModule"] = {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8}
    value["tdxModuleIdentities"] = [
        {
            "id": "TDX_01",
            "mrsigner": "00" * 48,
            "attributes": "00" * 8,
            "attributesMask": "FF" * 8,
            "tcbLevels": [
                {"tcb": {"isvsvn": svn}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status}
                for svn, status in (module_levels or [(5, "UpToDate")])
            ],
        }
    ]
    value["tcbLevels"] = [
        {
            "tcb": {
                "sgxtcbcomponents": [{"svn": svn} for svn in TCB_COMPONENTS],
                "pcesvn": PCE_SVN,
                "tdxtcbcomponents": [{"svn": svn} for svn in tdx],
            },
            "tcbDate": "2024-03-13T00:00:00Z",
            "tcbStatus": status,
            "advisoryIDs": [] if status == "UpToDate" else ["INTEL-SA-00001"],
        }
        for tdx, status in (levels or [(tuple(TEE_TCB_SVN), "UpToDate")])
    ]
    return value


def _tdx_collateral(self: SgxTestPki, **kwargs: Any) -> Collateral:
    qe = self.qe_identity(id="TD_QE", mrsigner=TD_QE_SIGNER.hex().upper(), isvprodid=2)
    qe["tcbLevels"] = [
        {"tcb": {"isvsvn": 4}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"}
    ]
    return self.collateral(tcb=self.tdx_tcb_info(**kwargs), qe=qe)


SgxTestPki.td_quote = _td_quote  # type: ignore[attr-defined]
SgxTestPki.tdx_tcb_info = _tdx_tcb_info  # type: ignore[attr-defined]
SgxTestPki.tdx_collateral = _tdx_collateral  # type: ignore[attr-defined]
SgxTestPki.pack_td_body = staticmethod(pack_td_body)  # type: ignore[attr-defined]
SgxTestPki.MRTD = MRTD  # type: ignore[attr-defined]
SgxTestPki.RTMRS = RTMRS  # type: ignore[attr-defined]
SgxTestPki.TEE_TCB_SVN = TEE_TCB_SVN  # type: ignore[attr-defined]


# --- AMD SEV-SNP: an ARK -> ASK -> VCEK test PKI, reports packed from the ABI specification -------

SNP_MEASUREMENT = bytes.fromhex("33" * 48)
SNP_CHIP_ID = bytes(range(64))
SNP_TCB = {"bootloader": 4, "tee": 1, "snp": 22, "microcode": 210}
AMD_OID = "1.3.6.1.4.1.3704.1"
GUIDS = {  # RFC 4122 byte order, as the GHCB specification's certificate table carries them
    "vcek": bytes.fromhex("63da758de6644564adc5f4b93be8accd"),
    "ask": bytes.fromhex("4ab7b379bbac4fe4a02f05aef327c782"),
    "ark": bytes.fromhex("c0b406a4a803495297433fb6014cd0ae"),
}


def _pss() -> Any:
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass
class SnpTestPki:
    """A test ARK (RSA, RSA-PSS/SHA-384) -> ASK -> VCEK (P-384) and a report packer."""

    MEASUREMENT = SNP_MEASUREMENT
    TCB = SNP_TCB
    now: dt.datetime = NOW
    product: str = "Milan"  # Turin: 8-byte chip id, FMC in the TCB, CPUID family 0x1A

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.turin = self.product == "Turin"
        self.CHIP_ID = SNP_CHIP_ID[:8] + bytes(56) if self.turin else SNP_CHIP_ID
        self.ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark, ask = f"ARK-{self.product}", f"SEV-{self.product}"
        self.ark = self.rsa_cert(ark, self.ark_key, ark, self.ark_key, ca=True)
        self.ask = self.rsa_cert(ask, self.ask_key, ark, self.ark_key, ca=True)
        self.vcek = self.vcek_cert()

    def rsa_cert(self, subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA384(), rsa_padding=_pss())
        )

    def vcek_cert(
        self,
        *,
        tcb: dict[str, int] | None = None,
        chip_id: bytes | None = None,
        signer: Any = None,
        issuer: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.Certificate:
        tcb = tcb or SNP_TCB
        issuer = issuer or f"SEV-{self.product}"
        if chip_id is None:
            chip_id = self.CHIP_ID[:8] if self.turin else self.CHIP_ID

        def integer(value: int) -> bytes:
            return bytes([0x02, 1, value]) if value < 0x80 else bytes([0x02, 2, 0, value])

        extensions = [
            (f"{AMD_OID}.1", integer(0)),
            (f"{AMD_OID}.2", b"\x16\x05Turin" if self.turin else b"\x16\x08Milan-B0"),
            (f"{AMD_OID}.3.1", integer(tcb["bootloader"])),
            (f"{AMD_OID}.3.2", integer(tcb["tee"])),
            (f"{AMD_OID}.3.3", integer(tcb["snp"])),
            (f"{AMD_OID}.3.8", integer(tcb["microcode"])),
            (f"{AMD_OID}.4", chip_id),
        ]
        if self.turin:
            extensions.append((f"{AMD_OID}.3.9", integer(tcb.get("fmc", 0))))
        builder = (
            x509.CertificateBuilder()
            .subject_name(name("SEV-VCEK"))
            .issuer_name(name(issuer))
            .public_key((key or self.vcek_key).public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=365))
        )
        for oid, value in extensions:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
            )
        return builder.sign(signer or self.ask_key, hashes.SHA384(), rsa_padding=_pss())

    def tcb_u64(self, tcb: dict[str, int]) -> int:
        """TCB_VERSION: Milan/Genoa BL, TEE, 4 reserved, SNP, UCODE; Turin FMC, BL, TEE, SNP,
        3 reserved, UCODE (SEV-SNP ABI specification, TCB_VERSION)."""
        if self.turin:
            raw = bytes(
                [tcb.get("fmc", 0), tcb["bootloader"], tcb["tee"], tcb["snp"], 0, 0, 0,
                 tcb["microcode"]]
            )  # fmt: skip
        else:
            raw = bytes([tcb["bootloader"], tcb["tee"], 0, 0, 0, 0, tcb["snp"], tcb["microcode"]])
        return int.from_bytes(raw, "little")

    def report(
        self,
        *,
        version: int = 2,
        report_data: bytes = bytes(64),
        measurement: bytes = SNP_MEASUREMENT,
        policy: int = 0x30000,  # SMT allowed, reserved bit 17
        vmpl: int = 0,
        host_data: bytes = bytes(32),
        tcb: dict[str, int] | None = None,
        chip_id: bytes | None = None,
        flags: int = 0,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """1184 bytes: fields at the ABI specification's offsets, then R and S little-endian."""
        tcb_raw = self.tcb_u64(tcb or SNP_TCB)
        data = bytearray(0x4A0)
        struct.pack_into("<IIQ", data, 0x00, version, 0, policy)
        struct.pack_into("<IIQQI", data, 0x30, vmpl, 1, tcb_raw, 0, flags)
        data[0x50:0x90] = report_data
        data[0x90:0xC0] = measurement
        data[0xC0:0xE0] = host_data
        struct.pack_into("<Q", data, 0x180, tcb_raw)
        if version >= 3:  # CPUID family/model/stepping: Milan 19h/01h, Turin 1Ah/02h
            data[0x188:0x18B] = bytes([0x1A, 0x02, 0x00] if self.turin else [0x19, 0x01, 0x01])
        data[0x1A0:0x1E0] = self.CHIP_ID if chip_id is None else chip_id
        struct.pack_into("<Q", data, 0x1E0, tcb_raw)
        struct.pack_into("<Q", data, 0x1F0, tcb_raw)
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature as dds

        r, s = dds((key or self.vcek_key).sign(bytes(data[:0x2A0]), ec.ECDSA(hashes.SHA384())))
        data[0x2A0:0x2E8] = r.to_bytes(72, "little")
        data[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(data)

    def evidence(
        self,
        report: bytes | None = None,
        *,
        vcek: x509.Certificate | None = None,
        ask: x509.Certificate | None = None,
        ark: x509.Certificate | None = None,
        **report_fields: Any,
    ) -> bytes:
        """The report followed by a GUID certificate table (VCEK, ASK, ARK as DER)."""
        certs = [
            ("vcek", vcek or self.vcek),
            ("ask", ask or self.ask),
            ("ark", ark or self.ark),
        ]
        blobs = [(GUIDS[k], c.public_bytes(serialization.Encoding.DER)) for k, c in certs]
        table_size = 24 * (len(blobs) + 1)
        header, body = b"", b""
        for guid, blob in blobs:
            header += struct.pack("<16sII", guid, table_size + len(body), len(blob))
            body += blob
        return (report or self.report(**report_fields)) + header + bytes(24) + body

    def roots(self) -> list[Any]:
        from bastion.tee.attestation.amd_roots import AmdProductRoot

        return [AmdProductRoot(self.product, self.ark, self.ask)]


@pytest.fixture(scope="session")
def snp_pki() -> SnpTestPki:
    return SnpTestPki()


@pytest.fixture(scope="session")
def turin_pki() -> SnpTestPki:
    return SnpTestPki(product="Turin")


@pytest.fixture(scope="session")
def other_snp_pki() -> SnpTestPki:
    """An unrelated ARK/ASK/VCEK: never the pinned one."""
    return SnpTestPki()
