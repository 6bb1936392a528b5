"""Intel SGX DCAP quotes, version 3, attestation key ECDSA-256-with-P-256: parse and pack.

The layout follows these public documents, field for field:

* Intel, "Intel SGX ECDSA Quote Library API" (DCAP), appendix "Quote Format": the quote
  header, the ISV enclave report body, and the ECDSA-256 quote signature data.
* intel/SGXDataCenterAttestationPrimitives, ``QuoteGeneration/quote_wrapper/common/inc/
  sgx_quote_3.h``: ``sgx_quote_header_t``, ``sgx_quote3_t``, ``sgx_ql_ecdsa_sig_data_t``,
  ``sgx_ql_auth_data_t``, ``sgx_ql_certification_data_t`` (all ``#pragma pack(1)``).
* The SGX SDK's ``sgx_report.h``: ``sgx_report_body_t`` (384 bytes, offsets below).

Integers are little-endian.  ECDSA signatures are ``r || s`` and public keys ``x || y``,
each coordinate 32 bytes big-endian (the API document's "ECDSA 256-bit signature" and
"EC KT-I public key").  The whole quote::

    offset  size  field
         0    48  header: version u16, att_key_type u16, tee_type u32 (att_key_data_0 in
                  v3, 0 for SGX), qe_svn u16, pce_svn u16, qe_vendor_id 16, user_data 20
        48   384  ISV enclave report body
       432     4  signature data length u32 (must equal the bytes that follow)
       436    64  ISV enclave report signature, by the attestation key over bytes 0..431
       500    64  attestation public key
       564   384  QE report body (report_data = SHA-256(att key || QE auth data) || 0*32)
       948    64  QE report signature, by the PCK certificate's key over the QE report body
      1012  2 + n QE authentication data: size u16, data
         .  6 + m certification data: type u16 (5 = PEM PCK certificate chain), size u32, data

Report body (offsets within its 384 bytes): cpu_svn 0 (16), misc_select 16 (u32),
reserved 20 (12), isv_ext_prod_id 32 (16), attributes 48 (flags u64, xfrm u64; flags bit 1 =
DEBUG), mr_enclave 64 (32), reserved 96 (32), mr_signer 128 (32), reserved 160 (32),
config_id 192 (64), isv_prod_id 256 (u16), isv_svn 258 (u16), config_svn 260 (u16),
reserved 262 (42), isv_family_id 304 (16), report_data 320 (64).

Quotes larger than ``MAX_QUOTE_SIZE`` (64 KiB) are refused before parsing: a real quote with
its PEM chain is about 4.6 KiB, so the cap only stops a peer from making us hash megabytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bastion.tee.attestation.errors import QuoteFormatError

MAX_QUOTE_SIZE = 64 * 1024
QUOTE_VERSION_3 = 3
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0
CERT_TYPE_PCK_CHAIN = 5
DEBUG_FLAG = 0x2
HEADER_SIZE = 48
REPORT_BODY_SIZE = 384
SIGNED_SIZE = HEADER_SIZE + REPORT_BODY_SIZE
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 64
REPORT_DATA_SIZE = 64
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
# Intel's quoting enclave identity (PCS "QE identity" collateral): its signer and product id.
INTEL_QE_MRSIGNER = bytes.fromhex(
    "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"
)
INTEL_QE_ISV_PROD_ID = 1

_HEADER = struct.Struct("<HHIHH16s20s")
_REPORT_BODY = struct.Struct("<16sI12s16sQQ32s32s32s32s64sHHH42s16s64s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CERT_HEADER = struct.Struct("<HI")


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header: which quoting enclave signed, with which key type."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    def pack(self) -> bytes:
        """Encode as the 48 bytes of ``sgx_quote_header_t``."""
        _require_size("qe_vendor_id", self.qe_vendor_id, 16)
        _require_size("user_data", self.user_data, 20)
        return _HEADER.pack(
            self.version,
            self.att_key_type,
            self.tee_type,
            self.qe_svn,
            self.pce_svn,
            self.qe_vendor_id,
            self.user_data,
        )

    @classmethod
    def unpack(cls, data: bytes) -> QuoteHeader:
        """Decode exactly 48 bytes."""
        _require_size("quote header", data, HEADER_SIZE)
        version, key_type, tee_type, qe_svn, pce_svn, vendor, user = _HEADER.unpack(data)
        return cls(version, key_type, tee_type, qe_svn, pce_svn, vendor, user)


@dataclass(frozen=True)
class ReportBody:
    """An SGX report body: the enclave's identity as measured by the CPU."""

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int = 0
    isv_svn: int = 0
    report_data: bytes = bytes(REPORT_DATA_SIZE)
    flags: int = 0
    xfrm: int = 0
    cpu_svn: bytes = bytes(16)
    misc_select: int = 0
    isv_ext_prod_id: bytes = bytes(16)
    config_id: bytes = bytes(64)
    config_svn: int = 0
    isv_family_id: bytes = bytes(16)

    @property
    def debug(self) -> bool:
        """True when the enclave runs in debug mode (its memory is readable by the host)."""
        return bool(self.flags & DEBUG_FLAG)

    @property
    def attributes(self) -> bytes:
        """The 16-byte ATTRIBUTES field (flags then xfrm), as collateral masks expect."""
        return struct.pack("<QQ", self.flags, self.xfrm)

    def pack(self) -> bytes:
        """Encode as the 384 bytes of ``sgx_report_body_t`` (reserved fields zero)."""
        for name, size in (
            ("mr_enclave", 32),
            ("mr_signer", 32),
            ("report_data", REPORT_DATA_SIZE),
            ("cpu_svn", 16),
            ("isv_ext_prod_id", 16),
            ("config_id", 64),
            ("isv_family_id", 16),
        ):
            _require_size(name, getattr(self, name), size)
        return _REPORT_BODY.pack(
            self.cpu_svn,
            self.misc_select,
            bytes(12),
            self.isv_ext_prod_id,
            self.flags,
            self.xfrm,
            self.mr_enclave,
            bytes(32),
            self.mr_signer,
            bytes(32),
            self.config_id,
            self.isv_prod_id,
            self.isv_svn,
            self.config_svn,
            bytes(42),
            self.isv_family_id,
            self.report_data,
        )

    @classmethod
    def unpack(cls, data: bytes) -> ReportBody:
        """Decode exactly 384 bytes."""
        _require_size("report body", data, REPORT_BODY_SIZE)
        (
            cpu_svn,
            misc_select,
            _reserved1,
            isv_ext_prod_id,
            flags,
            xfrm,
            mr_enclave,
            _reserved2,
            mr_signer,
            _reserved3,
            config_id,
            isv_prod_id,
            isv_svn,
            config_svn,
            _reserved4,
            isv_family_id,
            report_data,
        ) = _REPORT_BODY.unpack(data)
        return cls(
            mr_enclave=mr_enclave,
            mr_signer=mr_signer,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            report_data=report_data,
            flags=flags,
            xfrm=xfrm,
            cpu_svn=cpu_svn,
            misc_select=misc_select,
            isv_ext_prod_id=isv_ext_prod_id,
            config_id=config_id,
            config_svn=config_svn,
            isv_family_id=isv_family_id,
        )


@dataclass(frozen=True)
class Quote:
    """A parsed quote; ``signed_bytes`` and ``qe_report_bytes`` are the exact signed spans."""

    header: QuoteHeader
    report_body: ReportBody
    signature: bytes
    attestation_public_key: bytes
    qe_report_body: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data_type: int
    certification_data: bytes
    signed_bytes: bytes
    qe_report_bytes: bytes


class _Reader:
    """Bounds-checked cursor: every read says what it wanted when the quote is short."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self.offset

    def take(self, size: int, what: str) -> bytes:
        if size > self.remaining:
            raise QuoteFormatError(
                f"quote truncated: {what} needs {size} bytes at offset {self.offset}, "
                f"but only {self.remaining} remain (quote is {len(self._data)} bytes)",
                reason="quote_truncated",
            )
        chunk = self._data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def u16(self, what: str) -> int:
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value


def parse_quote(data: bytes) -> Quote:
    """Parse a DCAP v3 ECDSA-P256 SGX quote, checking every length before slicing it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuoteFormatError(f"a quote must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise QuoteFormatError(
            f"quote is {len(data)} bytes, over the {MAX_QUOTE_SIZE}-byte limit; "
            "a genuine SGX DCAP quote is about 5 KiB",
            reason="quote_oversized",
        )
    reader = _Reader(data)
    header = QuoteHeader.unpack(reader.take(HEADER_SIZE, "quote header"))
    _check_header(header)
    report_body = ReportBody.unpack(reader.take(REPORT_BODY_SIZE, "ISV enclave report body"))
    signature_data_len = reader.u32("signature data length")
    if signature_data_len != reader.remaining:
        truncated = signature_data_len > reader.remaining
        raise QuoteFormatError(
            f"quote {'truncated' if truncated else 'malformed'}: it declares "
            f"{signature_data_len} bytes of signature data at offset {SIGNED_SIZE + 4}, but "
            f"{reader.remaining} bytes follow",
            reason="quote_truncated" if truncated else "quote_format",
        )
    signature = reader.take(SIGNATURE_SIZE, "ISV enclave report signature")
    attestation_public_key = reader.take(PUBLIC_KEY_SIZE, "attestation public key")
    qe_report_bytes = reader.take(REPORT_BODY_SIZE, "QE report body")
    qe_report_signature = reader.take(SIGNATURE_SIZE, "QE report signature")
    qe_auth_data = reader.take(reader.u16("QE authentication data size"), "QE authentication data")
    cert_type = reader.u16("certification data type")
    certification_data = reader.take(reader.u32("certification data size"), "certification data")
    if reader.remaining:
        raise QuoteFormatError(
            f"{reader.remaining} unexpected bytes after the certification data at offset "
            f"{reader.offset}"
        )
    return Quote(
        header=header,
        report_body=report_body,
        signature=signature,
        attestation_public_key=attestation_public_key,
        qe_report_body=ReportBody.unpack(qe_report_bytes),
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        certification_data_type=cert_type,
        certification_data=certification_data,
        signed_bytes=data[:SIGNED_SIZE],
        qe_report_bytes=qe_report_bytes,
    )


def pack_quote(
    header: QuoteHeader,
    report_body: ReportBody,
    *,
    signature: bytes,
    attestation_public_key: bytes,
    qe_report_body: ReportBody,
    qe_report_signature: bytes,
    qe_auth_data: bytes,
    certification_data: bytes,
    certification_data_type: int = CERT_TYPE_PCK_CHAIN,
) -> bytes:
    """Assemble a quote from its parts (the inverse of `parse_quote`)."""
    _require_size("signature", signature, SIGNATURE_SIZE)
    _require_size("attestation_public_key", attestation_public_key, PUBLIC_KEY_SIZE)
    _require_size("qe_report_signature", qe_report_signature, SIGNATURE_SIZE)
    if len(qe_auth_data) > 0xFFFF:
        raise QuoteFormatError(f"QE authentication data is {len(qe_auth_data)} bytes, over 65535")
    signature_data = b"".join(
        (
            signature,
            attestation_public_key,
            qe_report_body.pack(),
            qe_report_signature,
            _U16.pack(len(qe_auth_data)),
            qe_auth_data,
            _CERT_HEADER.pack(certification_data_type, len(certification_data)),
            certification_data,
        )
    )
    quote = header.pack() + report_body.pack() + _U32.pack(len(signature_data)) + signature_data
    if len(quote) > MAX_QUOTE_SIZE:
        raise QuoteFormatError(f"packed quote is {len(quote)} bytes, over {MAX_QUOTE_SIZE}")
    return quote


def _check_header(header: QuoteHeader) -> None:
    if header.version != QUOTE_VERSION_3:
        raise QuoteFormatError(
            f"unsupported quote version {header.version}: only SGX DCAP quote version 3 is "
            "supported (version 4/5 quotes are TDX or newer SGX formats)"
        )
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteFormatError(
            f"unsupported attestation key type {header.att_key_type}: only 2 "
            "(ECDSA-256-with-P-256) is supported"
        )
    if header.tee_type != TEE_TYPE_SGX:
        raise QuoteFormatError(
            f"quote header TEE type is {header.tee_type:#x}, not 0 (SGX): not an SGX quote"
        )


def _require_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise QuoteFormatError(f"{name} must be {size} bytes, got {len(value)}")
