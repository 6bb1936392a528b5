"""A strict, minimal DER reader: just enough to read Intel's SGX extension in PCK certificates.

`cryptography` hands the SGX extension (OID 1.2.840.113741.1.13.1) over as raw DER; this module
walks its TLVs (ITU-T X.690 definite-length encoding), refusing anything out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.tee.attestation.errors import AttestationError

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30
_MAX_LENGTH_BYTES = 4


class DerError(AttestationError):
    """The DER inside a certificate extension is malformed."""

    reason = "der"


@dataclass(frozen=True)
class Tlv:
    """One decoded element: its tag byte and content bytes."""

    tag: int
    value: bytes


def read_all(data: bytes) -> list[Tlv]:
    """Decode a concatenation of TLVs that must fill `data` exactly."""
    items: list[Tlv] = []
    offset = 0
    while offset < len(data):
        item, offset = _read_one(data, offset)
        items.append(item)
    return items


def read_single(data: bytes, tag: int) -> Tlv:
    """Decode exactly one TLV with the expected tag."""
    items = read_all(data)
    if len(items) != 1 or items[0].tag != tag:
        raise DerError(f"expected one DER element with tag {tag:#04x}")
    return items[0]


def decode_integer(item: Tlv) -> int:
    """A non-negative INTEGER or ENUMERATED (SVNs and types are never negative)."""
    if item.tag not in (TAG_INTEGER, TAG_ENUMERATED) or not item.value:
        raise DerError(f"expected a DER INTEGER, got tag {item.tag:#04x}")
    if item.value[0] & 0x80:
        raise DerError("negative DER INTEGER where a version number was expected")
    return int.from_bytes(item.value, "big")


def decode_oid(item: Tlv) -> str:
    """Dotted-decimal form of an OBJECT IDENTIFIER."""
    if item.tag != TAG_OID or not item.value or item.value[-1] & 0x80:
        raise DerError("malformed DER OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in item.value:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


def _read_one(data: bytes, offset: int) -> tuple[Tlv, int]:
    if offset + 2 > len(data):
        raise DerError("DER element truncated before its length")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tags are not used in SGX extensions")
    first = data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > _MAX_LENGTH_BYTES or offset + count > len(data):
            raise DerError("DER length is indefinite, too long, or truncated")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if length > len(data) - offset:
        raise DerError(f"DER element claims {length} bytes, only {len(data) - offset} remain")
    return Tlv(tag, data[offset : offset + length]), offset + length
