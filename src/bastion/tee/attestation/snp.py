"""AMD SEV-SNP attestation reports (versions 2, 3 and 5) and the certificate table beside them.

Layout: AMD, "SEV Secure Nested Paging Firmware ABI Specification" (pub. 56860), table
"ATTESTATION_REPORT Structure"; all integers little-endian, 1184 (0x4A0) bytes::

    0x000 VERSION u32          0x004 GUEST_SVN u32       0x008 POLICY u64
    0x010 FAMILY_ID 16         0x020 IMAGE_ID 16         0x030 VMPL u32
    0x034 SIGNATURE_ALGO u32   0x038 CURRENT_TCB u64     0x040 PLATFORM_INFO u64
    0x048 flags u32 (bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 2-4 SIGNING_KEY: 0 VCEK,
          1 VLEK, 7 none)      0x04C reserved
    0x050 REPORT_DATA 64       0x090 MEASUREMENT 48      0x0C0 HOST_DATA 32
    0x0E0 ID_KEY_DIGEST 48     0x110 AUTHOR_KEY_DIGEST 48
    0x140 REPORT_ID 32         0x160 REPORT_ID_MA 32     0x180 REPORTED_TCB u64
    0x188 CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (v3+; zero in v2), reserved to 0x1A0
    0x1A0 CHIP_ID 64           0x1E0 COMMITTED_TCB u64   0x1E8 CURRENT build/minor/major
    0x1EC COMMITTED build/minor/major                     0x1F0 LAUNCH_TCB u64
    0x1F8 LAUNCH_MIT_VECTOR u64, 0x200 CURRENT_MIT_VECTOR u64 (v5), reserved to 0x2A0
    0x2A0 SIGNATURE: R 72 bytes, S 72 bytes (little-endian, zero-extended), reserved to 0x4A0

The signature (algorithm 1: ECDSA P-384 with SHA-384) covers bytes 0x000..0x29F.  A TCB_VERSION
is BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE (one byte each) on Milan and Genoa; on Turin
(CPUID family 0x1A) it is FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE.

Guest policy bits used by the verifier: 16 SMT allowed, 17 reserved (must be 1), 18 migration
agent allowed, 19 debug allowed.

The certificate table (``auxblob`` of configfs-tsm, or SNP_GET_EXT_REPORT) is a list of
(GUID 16 bytes in RFC 4122 order, offset u32, length u32) entries ending with an all-zero entry;
offsets are from the table's start.  Bastion's SNP *evidence* is the report followed by that
table (or by nothing, when the verifier is handed the VCEK another way).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from bastion.tee.attestation.errors import QuoteFormatError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_SMT = 1 << 16
POLICY_RESERVED_1 = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
TURIN_FAMILY = 0x1A
MAX_CERT_TABLE = 64 * 1024
MAX_CERT_ENTRIES = 16

GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")

_HEAD = struct.Struct("<IIQ16s16sIIQQII64s48s32s48s48s32s32sQBBB21s64sQBBBxBBBxQQQ")


@dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION, split into its security patch levels."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int = 0

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def as_dict(self) -> dict[str, int]:
        return {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
            "fmc": self.fmc,
        }


@dataclass(frozen=True)
class SnpReport:
    """A parsed attestation report; ``signed_bytes`` is the exact span the signature covers."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_family: int
    cpuid_model: int
    cpuid_stepping: int
    chip_id: bytes
    committed_tcb: TcbVersion
    launch_tcb: TcbVersion
    signature_r: int
    signature_s: int
    signed_bytes: bytes

    @property
    def debug_allowed(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migration_agent_allowed(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy & POLICY_SMT)

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 0x7

    @property
    def chip_id_masked(self) -> bool:
        return bool(self.flags & 0x2)

    @property
    def is_turin(self) -> bool:
        return self.cpuid_family == TURIN_FAMILY


def looks_like_snp_report(data: bytes) -> bool:
    """True when ``data`` starts like an SNP report: a u32 version 2, 3 or 5 (DCAP quotes carry
    their attestation key type, 2, in bytes 2..3 where a report has zeros) and is long enough."""
    if len(data) < REPORT_SIZE:
        return False
    version = struct.unpack_from("<I", data)[0]
    return version in SUPPORTED_VERSIONS


def parse_snp_report(data: bytes) -> SnpReport:
    """Decode the 1184-byte report (extra bytes are refused; split evidence first)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuoteFormatError(f"an SNP report must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise QuoteFormatError(
            f"an SEV-SNP attestation report is {REPORT_SIZE} bytes, got {len(data)}",
            reason="snp_report_truncated" if len(data) < REPORT_SIZE else "snp_report_format",
        )
    fields = _HEAD.unpack_from(data)
    (
        version,
        guest_svn,
        policy,
        family_id,
        image_id,
        vmpl,
        signature_algo,
        current_tcb,
        platform_info,
        flags,
        _reserved0,
        report_data,
        measurement,
        host_data,
        id_key_digest,
        author_key_digest,
        report_id,
        report_id_ma,
        reported_tcb,
        family,
        model,
        stepping,
        _reserved1,
        chip_id,
        committed_tcb,
        _cur_build,
        _cur_minor,
        _cur_major,
        _com_build,
        _com_minor,
        _com_major,
        launch_tcb,
        _launch_mit,
        _current_mit,
    ) = fields
    if version not in SUPPORTED_VERSIONS:
        raise QuoteFormatError(
            f"unsupported SEV-SNP report version {version}: versions 2, 3 and 5 are supported",
            reason="snp_report_format",
        )
    if signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise QuoteFormatError(
            f"SEV-SNP report signature algorithm {signature_algo} is not 1 (ECDSA P-384 "
            "with SHA-384)",
            reason="snp_report_format",
        )
    if version == 2:
        family = model = stepping = 0
    turin = family == TURIN_FAMILY
    signature = data[SIGNED_SIZE:]
    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=family_id,
        image_id=image_id,
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=TcbVersion.decode(current_tcb, turin=turin),
        platform_info=platform_info,
        flags=flags,
        report_data=report_data,
        measurement=measurement,
        host_data=host_data,
        id_key_digest=id_key_digest,
        author_key_digest=author_key_digest,
        report_id=report_id,
        report_id_ma=report_id_ma,
        reported_tcb=TcbVersion.decode(reported_tcb, turin=turin),
        cpuid_family=family,
        cpuid_model=model,
        cpuid_stepping=stepping,
        chip_id=chip_id,
        committed_tcb=TcbVersion.decode(committed_tcb, turin=turin),
        launch_tcb=TcbVersion.decode(launch_tcb, turin=turin),
        signature_r=int.from_bytes(signature[0:72], "little"),
        signature_s=int.from_bytes(signature[72:144], "little"),
        signed_bytes=data[:SIGNED_SIZE],
    )


def parse_cert_table(table: bytes) -> dict[uuid.UUID, bytes]:
    """The certificates of a GUID table (auxblob), keyed by GUID; bounds checked throughout."""
    if len(table) > MAX_CERT_TABLE:
        raise QuoteFormatError(
            f"the SNP certificate table is {len(table)} bytes, over {MAX_CERT_TABLE}",
            reason="snp_cert_table",
        )
    entries: dict[uuid.UUID, bytes] = {}
    offset = 0
    while True:
        if offset + 24 > len(table):
            raise QuoteFormatError(
                "the SNP certificate table ends without its all-zero terminating entry",
                reason="snp_cert_table",
            )
        guid_bytes, start, length = struct.unpack_from("<16sII", table, offset)
        offset += 24
        if not any(guid_bytes) and start == 0 and length == 0:
            return entries
        if len(entries) >= MAX_CERT_ENTRIES:
            raise QuoteFormatError("the SNP certificate table has too many entries")
        if start + length > len(table) or start < offset:
            raise QuoteFormatError(
                f"an SNP certificate table entry points outside the table ({start}+{length} of "
                f"{len(table)} bytes)",
                reason="snp_cert_table",
            )
        entries[uuid.UUID(bytes=guid_bytes)] = table[start : start + length]


def pack_cert_table(certificates: dict[uuid.UUID, bytes]) -> bytes:
    """A GUID table holding ``certificates`` (the inverse of `parse_cert_table`)."""
    header_size = 24 * (len(certificates) + 1)
    header = b""
    body = b""
    for guid, blob in certificates.items():
        header += struct.pack("<16sII", guid.bytes, header_size + len(body), len(blob))
        body += blob
    return header + bytes(24) + body


def split_snp_evidence(data: bytes) -> tuple[bytes, dict[uuid.UUID, bytes]]:
    """Bastion's SNP evidence: the report, then (optionally) the certificate table."""
    if len(data) < REPORT_SIZE:
        raise QuoteFormatError(
            f"SNP evidence is {len(data)} bytes, shorter than a {REPORT_SIZE}-byte report",
            reason="snp_report_truncated",
        )
    rest = data[REPORT_SIZE:]
    return data[:REPORT_SIZE], (parse_cert_table(rest) if rest else {})
