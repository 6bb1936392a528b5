"""Intel TDX DCAP quotes, versions 4 and 5 (TEE type 0x81): parse and pack.

The layout follows Intel, "Intel TDX DCAP Quoting Library API" (appendix "TD Quote Format",
v4 and v5) and intel/SGXDataCenterAttestationPrimitives ``QuoteGeneration/quote_wrapper/
common/inc/sgx_quote_4.h`` and ``sgx_quote_5.h`` (all ``#pragma pack(1)``, little-endian)::

    v4: header 48 | TD report body 584 (TD 1.0)              | sig data len u32 | sig data
    v5: header 48 | body type u16 | body size u32 | body     | sig data len u32 | sig data
        (body type 2 = TD 1.0, 584 bytes; 3 = TD 1.5, 648 bytes; 1 = SGX is not a TD)

The signed span is everything before the signature data length.  Header: version u16,
att_key_type u16 (2 = ECDSA-256-with-P-256), tee_type u32 (0x81 = TDX), reserved 4,
qe_vendor_id 16, user_data 20.  TD report body (offsets within it)::

    tee_tcb_svn 0 (16)  mrseam 16 (48)  mrsignerseam 64 (48)  seam_attributes 112 (8)
    td_attributes 120 (8)  xfam 128 (8)  mrtd 136 (48)  mrconfigid 184 (48)  mrowner 232 (48)
    mrownerconfig 280 (48)  rtmr0..3 328.. (4 x 48)  report_data 520 (64)
    TD 1.5 only: tee_tcb_svn2 584 (16)  mrservicetd 600 (48)

Signature data (``sgx_quote4_sig_data``-style): ECDSA signature 64 (r||s over the signed span),
attestation public key 64 (x||y), then certification data type u16 = 6 ("QE report
certification data"), size u32, and inside it: QE report body 384, QE report signature 64,
QE auth data (size u16, data), and a nested certification data type u16 = 5 (PEM PCK chain),
size u32, data.  TD_ATTRIBUTES bit 0 is DEBUG (the TD's memory and state readable by the host).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bastion.tee.attestation.errors import QuoteFormatError
from bastion.tee.attestation.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_TYPE_PCK_CHAIN,
    HEADER_SIZE,
    MAX_QUOTE_SIZE,
    PUBLIC_KEY_SIZE,
    REPORT_BODY_SIZE,
    SIGNATURE_SIZE,
    QuoteHeader,
    ReportBody,
    _Reader,
)

TEE_TYPE_TDX = 0x81
QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5
CERT_TYPE_QE_REPORT = 6
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
TD_DEBUG = 0x1
MEASUREMENT_SIZE = 48

_TD10 = struct.Struct("<16s48s48sQQQ48s48s48s48s48s48s48s48s64s")
_TD15_EXTRA = struct.Struct("<16s48s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CERT_HEADER = struct.Struct("<HI")


@dataclass(frozen=True)
class TdReportBody:
    """A TD's identity as measured by the TDX module (TD 1.0 fields, plus TD 1.5's two)."""

    mrtd: bytes
    rtmr0: bytes = bytes(MEASUREMENT_SIZE)
    rtmr1: bytes = bytes(MEASUREMENT_SIZE)
    rtmr2: bytes = bytes(MEASUREMENT_SIZE)
    rtmr3: bytes = bytes(MEASUREMENT_SIZE)
    report_data: bytes = bytes(64)
    tee_tcb_svn: bytes = bytes(16)
    mrseam: bytes = bytes(MEASUREMENT_SIZE)
    mrsignerseam: bytes = bytes(MEASUREMENT_SIZE)
    seam_attributes: int = 0
    td_attributes: int = 0
    xfam: int = 0
    mrconfigid: bytes = bytes(MEASUREMENT_SIZE)
    mrowner: bytes = bytes(MEASUREMENT_SIZE)
    mrownerconfig: bytes = bytes(MEASUREMENT_SIZE)
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """True when TD_ATTRIBUTES.DEBUG is set: the host can read and change the TD."""
        return bool(self.td_attributes & TD_DEBUG)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def is_td15(self) -> bool:
        return self.tee_tcb_svn2 is not None

    def pack(self) -> bytes:
        """The 584 (TD 1.0) or 648 (TD 1.5) bytes of the body."""
        for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam", "mrsignerseam"):
            _require_size(name, getattr(self, name), MEASUREMENT_SIZE)
        for name in ("mrconfigid", "mrowner", "mrownerconfig"):
            _require_size(name, getattr(self, name), MEASUREMENT_SIZE)
        _require_size("report_data", self.report_data, 64)
        _require_size("tee_tcb_svn", self.tee_tcb_svn, 16)
        body = _TD10.pack(
            self.tee_tcb_svn,
            self.mrseam,
            self.mrsignerseam,
            self.seam_attributes,
            self.td_attributes,
            self.xfam,
            self.mrtd,
            self.mrconfigid,
            self.mrowner,
            self.mrownerconfig,
            *self.rtmrs,
            self.report_data,
        )
        if self.tee_tcb_svn2 is None and self.mrservicetd is None:
            return body
        if self.tee_tcb_svn2 is None or self.mrservicetd is None:
            raise QuoteFormatError("a TD 1.5 body needs both tee_tcb_svn2 and mrservicetd")
        _require_size("tee_tcb_svn2", self.tee_tcb_svn2, 16)
        _require_size("mrservicetd", self.mrservicetd, MEASUREMENT_SIZE)
        return body + _TD15_EXTRA.pack(self.tee_tcb_svn2, self.mrservicetd)

    @classmethod
    def unpack(cls, data: bytes) -> TdReportBody:
        """Decode a TD 1.0 (584-byte) or TD 1.5 (648-byte) body."""
        if len(data) not in (TD10_BODY_SIZE, TD15_BODY_SIZE):
            raise QuoteFormatError(f"a TD report body is 584 or 648 bytes, got {len(data)}")
        (
            tee_tcb_svn,
            mrseam,
            mrsignerseam,
            seam_attributes,
            td_attributes,
            xfam,
            mrtd,
            mrconfigid,
            mrowner,
            mrownerconfig,
            rtmr0,
            rtmr1,
            rtmr2,
            rtmr3,
            report_data,
        ) = _TD10.unpack(data[:TD10_BODY_SIZE])
        svn2 = service = None
        if len(data) == TD15_BODY_SIZE:
            svn2, service = _TD15_EXTRA.unpack(data[TD10_BODY_SIZE:])
        return cls(
            mrtd=mrtd,
            rtmr0=rtmr0,
            rtmr1=rtmr1,
            rtmr2=rtmr2,
            rtmr3=rtmr3,
            report_data=report_data,
            tee_tcb_svn=tee_tcb_svn,
            mrseam=mrseam,
            mrsignerseam=mrsignerseam,
            seam_attributes=seam_attributes,
            td_attributes=td_attributes,
            xfam=xfam,
            mrconfigid=mrconfigid,
            mrowner=mrowner,
            mrownerconfig=mrownerconfig,
            tee_tcb_svn2=svn2,
            mrservicetd=service,
        )


@dataclass(frozen=True)
class TdQuote:
    """A parsed TD quote; ``signed_bytes`` and ``qe_report_bytes`` are the exact signed spans."""

    header: QuoteHeader
    body_type: int
    td_report: TdReportBody
    signature: bytes
    attestation_public_key: bytes
    qe_report_body: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data_type: int
    certification_data: bytes
    signed_bytes: bytes
    qe_report_bytes: bytes

    @property
    def version(self) -> int:
        return self.header.version


def is_tdx_quote(data: bytes) -> bool:
    """True when ``data`` starts like a DCAP v4/v5 quote header with TEE type TDX."""
    if len(data) < 8:
        return False
    version, key_type, tee_type = struct.unpack_from("<HHI", data)
    return version in (QUOTE_VERSION_4, QUOTE_VERSION_5) and tee_type == TEE_TYPE_TDX


def parse_td_quote(data: bytes) -> TdQuote:
    """Parse a TDX quote (v4, or v5 with a TD 1.0 or TD 1.5 body), checking every length."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuoteFormatError(f"a quote must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise QuoteFormatError(
            f"quote is {len(data)} bytes, over the {MAX_QUOTE_SIZE}-byte limit",
            reason="quote_oversized",
        )
    reader = _Reader(data)
    header = QuoteHeader.unpack(reader.take(HEADER_SIZE, "quote header"))
    _check_header(header)
    if header.version == QUOTE_VERSION_4:
        body_type = BODY_TYPE_TD10
        body_bytes = reader.take(TD10_BODY_SIZE, "TD report body")
    else:
        body_type = reader.u16("v5 body type")
        body_size = reader.u32("v5 body size")
        expected = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise QuoteFormatError(
                f"v5 quote body type {body_type} is not a TD report (2 = TD 1.0, 3 = TD 1.5)"
            )
        if body_size != expected:
            raise QuoteFormatError(
                f"v5 quote body type {body_type} must be {expected} bytes, it declares {body_size}"
            )
        body_bytes = reader.take(body_size, "TD report body")
    signed_size = reader.offset
    signature_data_len = reader.u32("signature data length")
    if signature_data_len < reader.remaining and not any(
        data[signed_size + 4 + signature_data_len :]
    ):
        # Quote buffers from configfs-tsm or a QGS are often zero-padded past the quote's
        # declared end; zeros there are not part of the quote, anything else is refused.
        data = data[: signed_size + 4 + signature_data_len]
        reader = _Reader(data)
        reader.offset = signed_size + 4
    if signature_data_len != reader.remaining:
        truncated = signature_data_len > reader.remaining
        raise QuoteFormatError(
            f"quote {'truncated' if truncated else 'malformed'}: it declares "
            f"{signature_data_len} bytes of signature data at offset {signed_size + 4}, but "
            f"{reader.remaining} bytes follow",
            reason="quote_truncated" if truncated else "quote_format",
        )
    signature = reader.take(SIGNATURE_SIZE, "quote signature")
    attestation_public_key = reader.take(PUBLIC_KEY_SIZE, "attestation public key")
    outer_type = reader.u16("certification data type")
    outer = reader.take(reader.u32("certification data size"), "certification data")
    if reader.remaining:
        raise QuoteFormatError(f"{reader.remaining} unexpected bytes after the certification data")
    if outer_type != CERT_TYPE_QE_REPORT:
        raise QuoteFormatError(
            f"certification data type is {outer_type}, but a TD quote carries type 6 (QE report "
            "certification data)",
            reason="certification_data_type",
        )
    inner = _Reader(outer)
    qe_report_bytes = inner.take(REPORT_BODY_SIZE, "QE report body")
    qe_report_signature = inner.take(SIGNATURE_SIZE, "QE report signature")
    qe_auth_data = inner.take(inner.u16("QE authentication data size"), "QE authentication data")
    cert_type = inner.u16("PCK certification data type")
    certification_data = inner.take(inner.u32("PCK certification data size"), "PCK chain")
    if inner.remaining:
        raise QuoteFormatError(f"{inner.remaining} unexpected bytes after the PCK chain")
    return TdQuote(
        header=header,
        body_type=body_type,
        td_report=TdReportBody.unpack(body_bytes),
        signature=signature,
        attestation_public_key=attestation_public_key,
        qe_report_body=ReportBody.unpack(qe_report_bytes),
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        certification_data_type=cert_type,
        certification_data=certification_data,
        signed_bytes=data[:signed_size],
        qe_report_bytes=qe_report_bytes,
    )


def signed_span(header: QuoteHeader, body: TdReportBody) -> bytes:
    """The bytes the attestation key signs: header and body (v5: with type and size)."""
    packed = body.pack()
    if header.version == QUOTE_VERSION_4:
        if body.is_td15:
            raise QuoteFormatError("a v4 quote carries only a TD 1.0 body")
        return header.pack() + packed
    body_type = BODY_TYPE_TD15 if body.is_td15 else BODY_TYPE_TD10
    return header.pack() + _U16.pack(body_type) + _U32.pack(len(packed)) + packed


def pack_td_quote(
    header: QuoteHeader,
    body: TdReportBody,
    *,
    signature: bytes,
    attestation_public_key: bytes,
    qe_report_body: ReportBody,
    qe_report_signature: bytes,
    qe_auth_data: bytes,
    certification_data: bytes,
    certification_data_type: int = CERT_TYPE_PCK_CHAIN,
) -> bytes:
    """Assemble a TD quote from its parts (the inverse of `parse_td_quote`)."""
    _require_size("signature", signature, SIGNATURE_SIZE)
    _require_size("attestation_public_key", attestation_public_key, PUBLIC_KEY_SIZE)
    _require_size("qe_report_signature", qe_report_signature, SIGNATURE_SIZE)
    inner = b"".join(
        (
            qe_report_body.pack(),
            qe_report_signature,
            _U16.pack(len(qe_auth_data)),
            qe_auth_data,
            _CERT_HEADER.pack(certification_data_type, len(certification_data)),
            certification_data,
        )
    )
    signature_data = (
        signature
        + attestation_public_key
        + _CERT_HEADER.pack(CERT_TYPE_QE_REPORT, len(inner))
        + inner
    )
    quote = signed_span(header, body) + _U32.pack(len(signature_data)) + signature_data
    if len(quote) > MAX_QUOTE_SIZE:
        raise QuoteFormatError(f"packed quote is {len(quote)} bytes, over {MAX_QUOTE_SIZE}")
    return quote


def _check_header(header: QuoteHeader) -> None:
    if header.version not in (QUOTE_VERSION_4, QUOTE_VERSION_5):
        raise QuoteFormatError(
            f"unsupported TD quote version {header.version}: TDX quotes are version 4 or 5"
        )
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteFormatError(
            f"unsupported attestation key type {header.att_key_type}: only 2 "
            "(ECDSA-256-with-P-256) is supported"
        )
    if header.tee_type != TEE_TYPE_TDX:
        raise QuoteFormatError(
            f"quote header TEE type is {header.tee_type:#x}, not 0x81 (TDX): not a TD quote"
        )


def _require_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise QuoteFormatError(f"{name} must be {size} bytes, got {len(value)}")
