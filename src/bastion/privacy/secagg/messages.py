"""The messages of the five secure aggregation rounds, as plain dataclasses with a byte codec.

Bonawitz et al. 2017, Figure 4. The protocol objects exchange these and nothing else,
so any transport can carry them: ``to_bytes()`` gives a self-describing, length-prefixed
encoding (a kind tag first) and ``from_bytes`` refuses anything malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from bastion.errors import ProtocolError
from bastion.privacy.secagg.wire import Reader, Writer

_RING_DTYPES: dict[int, np.dtype] = {32: np.dtype("<u4"), 64: np.dtype("<u8")}
MAX_CREDENTIAL_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 1024


def _write_names(writer: Writer, names: tuple[str, ...]) -> None:
    writer.count(len(names))
    for name in names:
        writer.text(name)


def _read_names(reader: Reader) -> tuple[str, ...]:
    return tuple(reader.text() for _ in range(reader.count()))


def _write_map(writer: Writer, items: dict[str, bytes]) -> None:
    writer.count(len(items))
    for name in sorted(items):
        writer.text(name)
        writer.blob(items[name])


def _read_map(reader: Reader, what: str) -> dict[str, bytes]:
    items: dict[str, bytes] = {}
    for _ in range(reader.count()):
        name = reader.text()
        if name in items:
            raise ProtocolError(f"{what}: {name!r} appears twice")
        items[name] = reader.blob()
    return items


def _open(data: bytes, kind: bytes, what: str) -> Reader:
    reader = Reader(data, what)
    if reader.blob(64) != kind:
        raise ProtocolError(f"expected a {what} message")
    return reader


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client to server: the client's two public keys, signed by its identity key.

    ``credential`` proves whose identity key that is (the client's certificate, PEM), so
    peers can check the signature without trusting the server that relays it.
    """

    client: str
    c_public: bytes
    s_public: bytes
    signature: bytes
    credential: bytes = b""

    KIND: ClassVar[bytes] = b"secagg/advertise-keys"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        writer.text(self.client)
        writer.blob(self.c_public)
        writer.blob(self.s_public)
        writer.blob(self.signature)
        writer.blob(self.credential)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        reader = _open(data, cls.KIND, "AdvertiseKeys")
        message = cls(
            reader.text(),
            reader.blob(64),
            reader.blob(64),
            reader.blob(MAX_SIGNATURE_BYTES),
            reader.blob(MAX_CREDENTIAL_BYTES),
        )
        reader.finish()
        return message


@dataclass(frozen=True)
class KeyRoster:
    """Round 0, server to every client: all advertised keys (the set U1)."""

    keys: tuple[AdvertiseKeys, ...]

    KIND: ClassVar[bytes] = b"secagg/key-roster"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        writer.count(len(self.keys))
        for keys in self.keys:
            writer.blob(keys.to_bytes())
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyRoster:
        reader = _open(data, cls.KIND, "KeyRoster")
        keys = tuple(
            AdvertiseKeys.from_bytes(reader.blob(MAX_CREDENTIAL_BYTES + 4096))
            for _ in range(reader.count())
        )
        reader.finish()
        return cls(keys)


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1, client to server: shares of its secrets, one AEAD ciphertext per recipient."""

    sender: str
    ciphertexts: dict[str, bytes] = field(hash=False)

    KIND: ClassVar[bytes] = b"secagg/encrypted-shares"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        writer.text(self.sender)
        _write_map(writer, self.ciphertexts)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShares:
        reader = _open(data, cls.KIND, "EncryptedShares")
        message = cls(reader.text(), _read_map(reader, "EncryptedShares"))
        reader.finish()
        return message


@dataclass(frozen=True)
class SharesForClient:
    """Round 1, server to one client: the ciphertexts addressed to it, by sender (the set U2)."""

    recipient: str
    ciphertexts: dict[str, bytes] = field(hash=False)

    KIND: ClassVar[bytes] = b"secagg/shares-for-client"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        writer.text(self.recipient)
        _write_map(writer, self.ciphertexts)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SharesForClient:
        reader = _open(data, cls.KIND, "SharesForClient")
        message = cls(reader.text(), _read_map(reader, "SharesForClient"))
        reader.finish()
        return message


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client to server: the client's input plus its masks, modulo 2^k."""

    client: str
    vector: np.ndarray = field(hash=False)

    KIND: ClassVar[bytes] = b"secagg/masked-input"

    def to_bytes(self) -> bytes:
        bits = self.vector.dtype.itemsize * 8
        if bits not in _RING_DTYPES or self.vector.dtype.kind != "u" or self.vector.ndim != 1:
            raise ProtocolError("a masked input is a 1-D uint32 or uint64 vector")
        writer = Writer()
        writer.blob(self.KIND)
        writer.text(self.client)
        writer.uint(bits)
        writer.blob(self.vector.astype(_RING_DTYPES[bits], copy=False).tobytes())
        return writer.getvalue()

    def encoded_size(self) -> int:
        """``len(self.to_bytes())`` without building it (the vector is model-sized)."""
        return 4 + len(self.KIND) + 4 + len(self.client.encode()) + 8 + 4 + self.vector.nbytes

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        reader = _open(data, cls.KIND, "MaskedInput")
        client = reader.text()
        bits = reader.uint()
        if bits not in _RING_DTYPES:
            raise ProtocolError(f"MaskedInput: unsupported word size {bits}")
        raw = reader.blob()
        reader.finish()
        dtype = _RING_DTYPES[bits]
        if len(raw) % dtype.itemsize:
            raise ProtocolError("MaskedInput: payload is not a whole number of words")
        vector = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
        return cls(client, vector)


@dataclass(frozen=True)
class SurvivorList:
    """Round 3 (ConsistencyCheck), server to each survivor: who sent masked input (U3)."""

    survivors: tuple[str, ...]

    KIND: ClassVar[bytes] = b"secagg/survivor-list"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        _write_names(writer, self.survivors)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SurvivorList:
        reader = _open(data, cls.KIND, "SurvivorList")
        message = cls(_read_names(reader))
        reader.finish()
        return message


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3, client to server: its identity key's signature over (session, round, U3)."""

    client: str
    signature: bytes

    KIND: ClassVar[bytes] = b"secagg/consistency-signature"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        writer.text(self.client)
        writer.blob(self.signature)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencySignature:
        reader = _open(data, cls.KIND, "ConsistencySignature")
        message = cls(reader.text(), reader.blob(MAX_SIGNATURE_BYTES))
        reader.finish()
        return message


@dataclass(frozen=True)
class UnmaskingRequest:
    """Round 4, server to each client that signed: U3 again, and the signatures over it.

    ``signatures`` maps signer to signature; with SecAgg+ only those of signers the
    recipient needs (the holders of its neighbours' shares) are forwarded.
    """

    survivors: tuple[str, ...]
    signatures: dict[str, bytes] = field(hash=False)

    KIND: ClassVar[bytes] = b"secagg/unmasking-request"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        _write_names(writer, self.survivors)
        _write_map(writer, self.signatures)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskingRequest:
        reader = _open(data, cls.KIND, "UnmaskingRequest")
        message = cls(_read_names(reader), _read_map(reader, "UnmaskingRequest"))
        reader.finish()
        if any(len(s) > MAX_SIGNATURE_BYTES for s in message.signatures.values()):
            raise ProtocolError(
                f"UnmaskingRequest: a signature exceeds {MAX_SIGNATURE_BYTES} bytes"
            )
        return message


@dataclass(frozen=True)
class UnmaskingResponse:
    """Round 4, client to server: self-mask shares of survivors, key shares of dropped clients."""

    client: str
    self_mask_shares: dict[str, bytes] = field(hash=False)
    key_shares: dict[str, bytes] = field(hash=False)

    KIND: ClassVar[bytes] = b"secagg/unmasking-response"

    def to_bytes(self) -> bytes:
        writer = Writer()
        writer.blob(self.KIND)
        writer.text(self.client)
        _write_map(writer, self.self_mask_shares)
        _write_map(writer, self.key_shares)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskingResponse:
        reader = _open(data, cls.KIND, "UnmaskingResponse")
        client = reader.text()
        message = cls(
            client, _read_map(reader, "UnmaskingResponse"), _read_map(reader, "UnmaskingResponse")
        )
        reader.finish()
        return message


Message = (
    AdvertiseKeys
    | KeyRoster
    | EncryptedShares
    | SharesForClient
    | MaskedInput
    | SurvivorList
    | ConsistencySignature
    | UnmaskingRequest
    | UnmaskingResponse
)
