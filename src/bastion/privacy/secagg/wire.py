"""A tiny length-prefixed binary codec for secure aggregation messages (never pickle).

Fields are written in a fixed order: integers as 8-byte big-endian, byte strings and
text with a 4-byte length. ``Reader`` checks every length against what is left and
against a limit before it slices, so a hostile message can only be refused.
"""

from __future__ import annotations

import struct

from bastion.errors import ProtocolError

MAX_FIELD_BYTES = 1 << 31
MAX_ITEMS = 1 << 20
MAX_NAME_BYTES = 1024


def join_fields(*fields: bytes) -> bytes:
    """Unambiguous concatenation: each field behind its 4-byte length (for signing and AAD)."""
    writer = Writer()
    for field in fields:
        writer.blob(field)
    return writer.getvalue()


class Writer:
    """Appends fields to a growing buffer."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def uint(self, value: int) -> None:
        if value < 0:
            raise ProtocolError(f"cannot encode negative integer {value}")
        self._parts.append(struct.pack(">Q", value))

    def blob(self, value: bytes) -> None:
        if len(value) > MAX_FIELD_BYTES:
            raise ProtocolError(f"field of {len(value)} bytes exceeds {MAX_FIELD_BYTES}")
        self._parts.append(struct.pack(">I", len(value)))
        self._parts.append(bytes(value))

    def text(self, value: str) -> None:
        encoded = value.encode("utf-8")
        if len(encoded) > MAX_NAME_BYTES:
            raise ProtocolError(f"name longer than {MAX_NAME_BYTES} bytes: {value[:40]!r}...")
        self.blob(encoded)

    def count(self, value: int) -> None:
        if value > MAX_ITEMS:
            raise ProtocolError(f"{value} items exceed the limit of {MAX_ITEMS}")
        self.uint(value)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads fields back, refusing truncated, oversized or trailing data."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._offset = 0
        self._what = what

    def _take(self, size: int) -> memoryview:
        if size > len(self._data) - self._offset:
            raise ProtocolError(f"{self._what}: message is truncated")
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def uint(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def blob(self, limit: int = MAX_FIELD_BYTES) -> bytes:
        (size,) = struct.unpack(">I", self._take(4))
        if size > limit:
            raise ProtocolError(f"{self._what}: field of {size} bytes exceeds {limit}")
        return bytes(self._take(size))

    def text(self) -> str:
        raw = self.blob(MAX_NAME_BYTES)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self._what}: a name is not valid UTF-8") from None

    def count(self) -> int:
        value = self.uint()
        if value > MAX_ITEMS:
            raise ProtocolError(f"{self._what}: {value} items exceed the limit of {MAX_ITEMS}")
        return value

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise ProtocolError(f"{self._what}: {len(self._data) - self._offset} trailing bytes")
