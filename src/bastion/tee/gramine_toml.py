"""Writing Gramine manifest TOML by hand: mounts, arrays and strings, escaped.

Hand-written rather than through a TOML library so the manifest keeps Gramine's documented
layout (one trusted file per line, inline mount tables) and Bastion needs no extra package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    """One entry of ``fs.mounts`` (``chroot`` is Gramine's default type)."""

    path: str
    uri: str | None = None
    type: str = "chroot"
    key_name: str | None = None

    def toml(self) -> str:
        parts = [] if self.type == "chroot" else [f"type = {string(self.type)}"]
        parts.append(f"path = {string(self.path)}")
        if self.uri is not None:
            parts.append(f"uri = {string(self.uri)}")
        if self.key_name is not None:
            parts.append(f"key_name = {string(self.key_name)}")
        return "{ " + ", ".join(parts) + " }"


def array(key: str, values: Sequence[str], pinned: Sequence[tuple[str, str]] = ()) -> list[str]:
    tables = [f"  {{ uri = {string(uri)}, sha256 = {string(sha256)} }}," for uri, sha256 in pinned]
    return [f"{key} = [", *(f"  {string(value)}," for value in values), *tables, "]"]


def boolean(value: bool) -> str:
    return "true" if value else "false"


def string(value: str) -> str:
    """A TOML basic string (escapes quotes, backslashes and control characters)."""
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
