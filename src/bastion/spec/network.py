"""The plan's ``network`` section, and addresses that mean what they say.

An aggregator *listens* on one address (``network.listen``, every interface by default)
and sites *dial* another (``network.address``, a name in the aggregator's certificate).
gRPC would take ``127.0.0.1`` as port 443, ``https://host`` as a host name and port
70000 modulo 65536; a site then retries the wrong thing for minutes. Every address a
user types goes through ``parse_address`` first and is refused in one line if it is not
a plain host with an optional port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.errors import BastionError
from bastion.framing import DEFAULT_CHUNK_BYTES, Chunking

MIB = 1024 * 1024
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEFAULT_PORT = 50051

_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


class AddressError(BastionError):
    """An address or port a user gave cannot be used."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def target(self) -> str:
        """``host:port`` as gRPC dials it (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.target


def check_port(port: int, what: str = "port", allow_zero: bool = False) -> int:
    """``port`` if it is 1..65535 (0 too when the OS may pick one), else an ``AddressError``."""
    low = 0 if allow_zero else 1
    if not isinstance(port, int) or isinstance(port, bool) or not low <= port <= 65535:
        pick = " (0 lets the system pick a free one)" if allow_zero else ""
        raise AddressError(f"{what} {port!r} is not a TCP port: use {low}..65535{pick}")
    return port


def check_host(host: str, what: str = "host") -> str:
    """A bare host name or IP address, refused with the fix if it is anything else."""
    text = host.strip()
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise AddressError(
            f"{what} {host!r} has a scheme ({scheme}://); give HOST or HOST:PORT only "
            "(Bastion always speaks gRPC over mutual TLS)"
        )
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST.match(text) or "/" in text:
        raise AddressError(f"{what} {host!r} is not a host name or IP address")
    return text


def parse_address(value: str, default_port: int, what: str = "address") -> Address:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT``; a missing port is ``default_port``."""
    text = value.strip()
    if not text:
        raise AddressError(f"{what} is empty; give HOST or HOST:PORT")
    if "://" in text:
        check_host(text, what)
    host, port_text = text, ""
    if text.startswith("["):
        closing = text.find("]")
        if closing < 0:
            raise AddressError(f"{what} {value!r}: an IPv6 address needs a closing ']'")
        host, rest = text[: closing + 1], text[closing + 1 :]
        if rest and not rest.startswith(":"):
            raise AddressError(f"{what} {value!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:  # a bare IPv6 address
        host = text
    port = default_port
    if port_text:
        if not port_text.isdigit():
            raise AddressError(f"{what} {value!r}: port {port_text!r} is not a number")
        port = check_port(int(port_text), f"{what} {value!r}: port")
    return Address(check_host(host, what), check_port(port, f"{what} {value!r}: port"))


class NetworkSpec(BaseModel):
    """Where the aggregator listens, what sites dial, and the wire's sizes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(
        default="127.0.0.1",
        description="the host sites dial; must be a name in the aggregator's certificate",
    )
    listen: str = Field(default="0.0.0.0", description="the interface the aggregator binds")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    pki_dir: str = "pki"
    aggregator_name: str = Field(default="aggregator", pattern=NAME_PATTERN)
    chunk_mib: Annotated[float, Field(gt=0, le=64)] | Literal["auto"] = Field(
        default="auto",
        description="the largest wire chunk; 'auto': 960 KiB, smaller for smaller transfers",
    )
    max_update_mib: float = Field(default=4096.0, gt=0)
    max_concurrent_uploads: int = Field(
        default=2, ge=1, description="updates assembled at once; bounds aggregator memory"
    )
    idle_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="a stream with no message this long is cut"
    )
    receive_deadline_s: float = Field(
        default=3600.0, gt=0, description="no stream may stay open longer than this"
    )
    streams_per_peer: int = Field(
        default=4, ge=1, le=64, description="calls one identity may have open at once"
    )

    @model_validator(mode="before")
    @classmethod
    def _host_is_the_address(cls, value: Any) -> Any:
        """``host`` (before 0.2) was both the listen and the dial address: it is the latter."""
        if isinstance(value, dict) and "host" in value:
            value = dict(value)
            host = value.pop("host")
            if "address" in value:
                raise ValueError("give network.address, not network.host (its old name), alone")
            value["address"] = host
        return value

    @field_validator("address", "listen")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        try:
            return check_host(value)
        except AddressError as exc:
            raise ValueError(str(exc)) from None

    @property
    def chunk_bytes(self) -> int:
        """The largest streamed chunk in bytes, which every receiver accepts (the plan
        states MiB)."""
        if self.chunk_mib == "auto":
            return DEFAULT_CHUNK_BYTES
        return int(self.chunk_mib * MIB)

    @property
    def chunking(self) -> Chunking:
        """How senders cut a transfer: a fixed ``chunk_mib``, or sized to each transfer."""
        return Chunking(self.chunk_bytes, adaptive=self.chunk_mib == "auto")

    @property
    def max_update_bytes(self) -> int:
        """Largest model or update a peer may send, in bytes (the plan states MiB)."""
        return int(self.max_update_mib * MIB)

    @property
    def target(self) -> Address:
        """The aggregator as sites dial it."""
        return Address(self.address, self.port)
