"""Read, check and write SGX SIGSTRUCTs (the 1808-byte ``.sig`` file of ``gramine-sgx-sign``).

Layout and signing rules follow Intel SDM Vol. 3D, "Enclave Signature Structure
(SIGSTRUCT)": the RSA-3072 signature (PKCS#1 v1.5, SHA-256, exponent 3) covers bytes
0..127 (HEADER..RESERVED) and 900..1027 (MISCSELECT..ISVSVN), and Q1/Q2 are the helper
values EINIT uses to verify it. Attribute bits follow the SDM's "ATTRIBUTES" table. Offsets
were cross-checked with Gramine's ``python/graminelibos/sigstruct.py`` / ``sgx_sign.py`` and
the Linux kernel's ``struct sgx_sigstruct`` (``arch/x86/include/asm/sgx.h``).

DATE is the SDM's: a 32-bit little-endian word whose hex digits read ``yyyymmdd`` (BCD), which
the writer produces and current Gramine writes too.  The reader also accepts the binary form
older Gramine releases wrote (year as a little-endian u16, then month and day bytes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bastion.errors import BastionError
from bastion.tee.signing_key import SGX_MODULUS_BYTES, SGX_RSA_PUBLIC_EXPONENT, check_enclave_key

SIGSTRUCT_SIZE = 1808

#: HEADER: the 12 constant bytes, then a 32-bit type (bit 31 set = Intel debug-signed).
HEADER_PREFIX = bytes.fromhex("06000000e100000000000100")
HEADER_TYPE_DEBUG = 1 << 31
HEADER2 = bytes.fromhex("01010000600000006000000001000000")
VENDOR_INTEL = 0x8086

# Byte offsets of each field (SDM Vol. 3D, SIGSTRUCT table).
OFF_HEADER = 0
OFF_VENDOR = 16
OFF_DATE = 20
OFF_HEADER2 = 24
OFF_SWDEFINED = 40
OFF_MODULUS = 128
OFF_EXPONENT = 512
OFF_SIGNATURE = 516
OFF_MISCSELECT = 900
OFF_MISCMASK = 904
OFF_CET_ATTRIBUTES = 908
OFF_CET_ATTRIBUTES_MASK = 909
OFF_ISVFAMILYID = 912
OFF_ATTRIBUTES = 928
OFF_ATTRIBUTEMASK = 944
OFF_ENCLAVEHASH = 960
OFF_ISVEXTPRODID = 1008
OFF_ISVPRODID = 1024
OFF_ISVSVN = 1026
OFF_Q1 = 1040
OFF_Q2 = 1424

#: The two signed regions: HEADER..RESERVED and MISCSELECT..ISVSVN, 128 bytes each.
SIGNED_REGIONS = ((0, 128), (OFF_MISCSELECT, OFF_MISCSELECT + 128))

# ATTRIBUTES.FLAGS bits (SDM Vol. 3D, "ATTRIBUTES").
FLAG_INIT = 1 << 0
FLAG_DEBUG = 1 << 1
FLAG_MODE64BIT = 1 << 2
FLAG_PROVISIONKEY = 1 << 4
FLAG_EINITTOKENKEY = 1 << 5
FLAG_CET = 1 << 6
FLAG_KSS = 1 << 7
FLAG_AEXNOTIFY = 1 << 10
_FLAG_NAMES = (
    (FLAG_INIT, "init"),
    (FLAG_DEBUG, "debug"),
    (FLAG_MODE64BIT, "mode64bit"),
    (FLAG_PROVISIONKEY, "provisionkey"),
    (FLAG_EINITTOKENKEY, "einittokenkey"),
    (FLAG_CET, "cet"),
    (FLAG_KSS, "kss"),
    (FLAG_AEXNOTIFY, "aexnotify"),
)

#: Defaults used by gramine-sgx-sign (legacy x87+SSE XFRM, masks as in its sigstruct view).
DEFAULT_XFRM = 0x3
DEFAULT_FLAGS_MASK = 0xFFFF_FFFF_FFFF_FFFF
DEFAULT_XFRM_MASK = 0xFFFF_FFFF_FFF9_FF1B
DEFAULT_MISC_MASK = 0xFFFF_FFFF


class SigstructError(BastionError):
    """A SIGSTRUCT file is malformed, or its signature does not verify."""


@dataclass(frozen=True)
class EnclaveAttributes:
    """SECS.ATTRIBUTES as carried in a SIGSTRUCT: 64-bit FLAGS and 64-bit XFRM."""

    flags: int
    xfrm: int

    @property
    def debug(self) -> bool:
        """Debug enclaves can be read by the host (EDBGRD): never trust their secrets."""
        return bool(self.flags & FLAG_DEBUG)

    @property
    def mode64bit(self) -> bool:
        return bool(self.flags & FLAG_MODE64BIT)

    @property
    def provisionkey(self) -> bool:
        return bool(self.flags & FLAG_PROVISIONKEY)

    @property
    def einittokenkey(self) -> bool:
        return bool(self.flags & FLAG_EINITTOKENKEY)

    @property
    def kss(self) -> bool:
        return bool(self.flags & FLAG_KSS)

    def flag_names(self) -> list[str]:
        """Names of the set FLAGS bits, unknown bits as ``bitN``."""
        names = [name for bit, name in _FLAG_NAMES if self.flags & bit]
        known = sum(bit for bit, _ in _FLAG_NAMES)
        names += [f"bit{i}" for i in range(64) if self.flags & ~known & (1 << i)]
        return names


@dataclass(frozen=True)
class Sigstruct:
    """A parsed SIGSTRUCT; ``mrenclave`` is ENCLAVEHASH, ``mrsigner`` is computed."""

    header_type: int
    vendor: int
    date: dt.date | None
    sw_defined: int
    modulus: bytes
    exponent: int
    signature: bytes
    misc_select: int
    misc_mask: int
    cet_attributes: int
    cet_attributes_mask: int
    isv_family_id: bytes
    attributes: EnclaveAttributes
    attribute_mask: EnclaveAttributes
    mrenclave: bytes
    isv_ext_prod_id: bytes
    isv_prod_id: int
    isv_svn: int
    q1: bytes
    q2: bytes
    raw: bytes = field(repr=False)

    @property
    def mrsigner(self) -> bytes:
        """SHA-256 of MODULUS as stored (384 little-endian bytes), as EINIT computes it."""
        return hashlib.sha256(self.modulus).digest()

    @property
    def debug(self) -> bool:
        return self.attributes.debug

    def signed_data(self) -> bytes:
        """The 256 bytes the signature covers."""
        return b"".join(self.raw[start:end] for start, end in SIGNED_REGIONS)

    def verify_signature(self) -> None:
        """Check the RSA signature and Q1/Q2 as EINIT would; raise ``SigstructError`` if not."""
        if self.exponent != SGX_RSA_PUBLIC_EXPONENT:
            raise SigstructError(
                f"SIGSTRUCT exponent is {self.exponent}; SGX requires {SGX_RSA_PUBLIC_EXPONENT}"
            )
        n = int.from_bytes(self.modulus, "little")
        s = int.from_bytes(self.signature, "little")
        if n.bit_length() != SGX_MODULUS_BYTES * 8:
            raise SigstructError("SIGSTRUCT modulus is not a 3072-bit RSA modulus")
        public_key = rsa.RSAPublicNumbers(self.exponent, n).public_key()
        try:
            public_key.verify(
                s.to_bytes(SGX_MODULUS_BYTES, "big"),
                self.signed_data(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise SigstructError(
                "SIGSTRUCT signature does not verify: the file was altered after signing "
                "or signed with a different key"
            ) from None
        q1, q2 = _q1_q2(s, n)
        if int.from_bytes(self.q1, "little") != q1 or int.from_bytes(self.q2, "little") != q2:
            raise SigstructError("SIGSTRUCT Q1/Q2 do not match the signature: EINIT would refuse")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields, hex for byte strings."""
        return {
            "mrenclave": self.mrenclave.hex(),
            "mrsigner": self.mrsigner.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
            "attributes": {
                "flags": f"{self.attributes.flags:#x}",
                "xfrm": f"{self.attributes.xfrm:#x}",
                "names": self.attributes.flag_names(),
            },
            "attribute_mask": {
                "flags": f"{self.attribute_mask.flags:#x}",
                "xfrm": f"{self.attribute_mask.xfrm:#x}",
            },
            "misc_select": f"{self.misc_select:#x}",
            "misc_mask": f"{self.misc_mask:#x}",
            "vendor": f"{self.vendor:#x}",
            "date": self.date.isoformat() if self.date else None,
            "sw_defined": self.sw_defined,
            "intel_debug_signed": bool(self.header_type & HEADER_TYPE_DEBUG),
            "isv_family_id": self.isv_family_id.hex(),
            "isv_ext_prod_id": self.isv_ext_prod_id.hex(),
        }


def parse_sigstruct(data: bytes, *, source: str = "SIGSTRUCT") -> Sigstruct:
    """Parse the 1808 bytes of a SIGSTRUCT; ``source`` names it in error messages."""
    if len(data) != SIGSTRUCT_SIZE:
        raise SigstructError(
            f"{source}: expected {SIGSTRUCT_SIZE} bytes (an SGX SIGSTRUCT), got {len(data)}: "
            "pass the .sig file written by gramine-sgx-sign"
        )
    if data[: len(HEADER_PREFIX)] != HEADER_PREFIX:
        raise SigstructError(
            f"{source}: bad HEADER {data[:16].hex()}, expected {HEADER_PREFIX.hex()}........: "
            "not a SIGSTRUCT"
        )
    (header_type,) = struct.unpack_from("<I", data, 12)
    if header_type not in (0, HEADER_TYPE_DEBUG):
        raise SigstructError(f"{source}: bad HEADER type {header_type:#x}: not a SIGSTRUCT")
    if data[OFF_HEADER2 : OFF_HEADER2 + 16] != HEADER2:
        raise SigstructError(
            f"{source}: bad HEADER2 {data[OFF_HEADER2 : OFF_HEADER2 + 16].hex()}, "
            f"expected {HEADER2.hex()}: not a SIGSTRUCT"
        )
    vendor = _u32(data, OFF_VENDOR)
    if vendor not in (0, VENDOR_INTEL):
        raise SigstructError(f"{source}: VENDOR is {vendor:#x}; SGX allows only 0 or 0x8086")
    flags, xfrm = struct.unpack_from("<QQ", data, OFF_ATTRIBUTES)
    flags_mask, xfrm_mask = struct.unpack_from("<QQ", data, OFF_ATTRIBUTEMASK)
    return Sigstruct(
        header_type=header_type,
        vendor=vendor,
        date=_decode_date(data[OFF_DATE : OFF_DATE + 4]),
        sw_defined=_u32(data, OFF_SWDEFINED),
        modulus=data[OFF_MODULUS : OFF_MODULUS + SGX_MODULUS_BYTES],
        exponent=_u32(data, OFF_EXPONENT),
        signature=data[OFF_SIGNATURE : OFF_SIGNATURE + SGX_MODULUS_BYTES],
        misc_select=_u32(data, OFF_MISCSELECT),
        misc_mask=_u32(data, OFF_MISCMASK),
        cet_attributes=data[OFF_CET_ATTRIBUTES],
        cet_attributes_mask=data[OFF_CET_ATTRIBUTES_MASK],
        isv_family_id=data[OFF_ISVFAMILYID : OFF_ISVFAMILYID + 16],
        attributes=EnclaveAttributes(flags, xfrm),
        attribute_mask=EnclaveAttributes(flags_mask, xfrm_mask),
        mrenclave=data[OFF_ENCLAVEHASH : OFF_ENCLAVEHASH + 32],
        isv_ext_prod_id=data[OFF_ISVEXTPRODID : OFF_ISVEXTPRODID + 16],
        isv_prod_id=_u16(data, OFF_ISVPRODID),
        isv_svn=_u16(data, OFF_ISVSVN),
        q1=data[OFF_Q1 : OFF_Q1 + SGX_MODULUS_BYTES],
        q2=data[OFF_Q2 : OFF_Q2 + SGX_MODULUS_BYTES],
        raw=bytes(data),
    )


def read_sigstruct(path: Path) -> Sigstruct:
    """Read and parse a ``.sig`` file; errors name the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(SIGSTRUCT_SIZE + 1)
    except IsADirectoryError:
        raise SigstructError(f"{path} is a directory: pass the .sig file") from None
    except OSError as exc:
        raise SigstructError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > SIGSTRUCT_SIZE:
        size = path.stat().st_size
        raise SigstructError(
            f"{path}: expected {SIGSTRUCT_SIZE} bytes (an SGX SIGSTRUCT), got {size}: "
            "pass the .sig file written by gramine-sgx-sign"
        )
    return parse_sigstruct(data, source=str(path))


def build_sigstruct(
    private_key: rsa.RSAPrivateKey,
    *,
    mrenclave: bytes,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    debug: bool = False,
    flags: int | None = None,
    xfrm: int = DEFAULT_XFRM,
    misc_select: int = 0,
    misc_mask: int = DEFAULT_MISC_MASK,
    attribute_mask: EnclaveAttributes | None = None,
    vendor: int = 0,
    date: dt.date | None = None,
    sw_defined: int = 0,
) -> bytes:
    """Build and sign a SIGSTRUCT for a known MRENCLAVE (e.g. a simulated enclave identity).

    ``flags`` defaults to MODE64BIT, plus DEBUG when ``debug``; the rest follows
    ``gramine-sgx-sign``'s defaults.
    """
    check_enclave_key(private_key.public_key(), where="the signing key")
    if len(mrenclave) != 32:
        raise SigstructError(f"MRENCLAVE must be 32 bytes, got {len(mrenclave)}")
    for name, value, bits in (("isv_prod_id", isv_prod_id, 16), ("isv_svn", isv_svn, 16)):
        if not 0 <= value < 1 << bits:
            raise SigstructError(f"{name} must be in 0..{(1 << bits) - 1}, got {value}")
    if vendor not in (0, VENDOR_INTEL):
        raise SigstructError(f"vendor must be 0 or 0x8086, got {vendor:#x}")
    if flags is None:
        flags = FLAG_MODE64BIT | (FLAG_DEBUG if debug else 0)
    mask = attribute_mask or EnclaveAttributes(DEFAULT_FLAGS_MASK, DEFAULT_XFRM_MASK)
    buf = bytearray(SIGSTRUCT_SIZE)
    buf[: len(HEADER_PREFIX)] = HEADER_PREFIX
    struct.pack_into("<I", buf, OFF_VENDOR, vendor)
    buf[OFF_DATE : OFF_DATE + 4] = _encode_date_bcd(date or dt.date.today())
    buf[OFF_HEADER2 : OFF_HEADER2 + 16] = HEADER2
    struct.pack_into("<I", buf, OFF_SWDEFINED, sw_defined)
    struct.pack_into("<II", buf, OFF_MISCSELECT, misc_select, misc_mask)
    struct.pack_into("<QQ", buf, OFF_ATTRIBUTES, flags, xfrm)
    struct.pack_into("<QQ", buf, OFF_ATTRIBUTEMASK, mask.flags, mask.xfrm)
    buf[OFF_ENCLAVEHASH : OFF_ENCLAVEHASH + 32] = mrenclave
    struct.pack_into("<HH", buf, OFF_ISVPRODID, isv_prod_id, isv_svn)

    signed = b"".join(bytes(buf[start:end]) for start, end in SIGNED_REGIONS)
    s = int.from_bytes(private_key.sign(signed, padding.PKCS1v15(), hashes.SHA256()), "big")
    n = private_key.public_key().public_numbers().n
    q1, q2 = _q1_q2(s, n)
    buf[OFF_MODULUS : OFF_MODULUS + SGX_MODULUS_BYTES] = n.to_bytes(SGX_MODULUS_BYTES, "little")
    struct.pack_into("<I", buf, OFF_EXPONENT, SGX_RSA_PUBLIC_EXPONENT)
    buf[OFF_SIGNATURE : OFF_SIGNATURE + SGX_MODULUS_BYTES] = s.to_bytes(SGX_MODULUS_BYTES, "little")
    buf[OFF_Q1 : OFF_Q1 + SGX_MODULUS_BYTES] = q1.to_bytes(SGX_MODULUS_BYTES, "little")
    buf[OFF_Q2 : OFF_Q2 + SGX_MODULUS_BYTES] = q2.to_bytes(SGX_MODULUS_BYTES, "little")
    return bytes(buf)


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _q1_q2(signature: int, modulus: int) -> tuple[int, int]:
    """Q1 = floor(s^2 / n), Q2 = floor((s^3 - Q1*s*n) / n) (SDM, SIGSTRUCT)."""
    square = signature * signature
    q1 = square // modulus
    q2 = (square % modulus) * signature // modulus
    return q1, q2


def _encode_date_bcd(date: dt.date) -> bytes:
    """DATE as the SDM defines it: the hex digits of the 32-bit word read ``yyyymmdd``."""
    return struct.pack("<I", int(f"{date.year:04d}{date.month:02d}{date.day:02d}", 16))


def _decode_date(raw: bytes) -> dt.date | None:
    """SDM BCD ``yyyymmdd`` first, then Gramine's binary year/month/day; None if neither."""
    (word,) = struct.unpack("<I", raw)
    digits = f"{word:08x}"
    if digits.isdigit():
        bcd = _valid_date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        if bcd is not None:
            return bcd
    year, month, day = struct.unpack("<HBB", raw)
    return _valid_date(year, month, day)


def _valid_date(year: int, month: int, day: int) -> dt.date | None:
    if year < 1970:
        return None
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None
