"""Mask expansion: a 256-bit seed stretched into ring words with the ChaCha20 keystream.

Every mask comes from a full 256-bit seed through a cryptographic PRG, never from a
small seed or a statistical generator. The ChaCha20 key is HKDF-SHA256 of the seed with
the purpose (self mask or pairwise mask), the session and the round in its ``info``, so
the same seed never yields the same keystream for two purposes or two rounds.
"""

from __future__ import annotations

import enum
import sys

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.privacy.errors import SecAggError

SEED_BYTES = 32
_CHACHA_BLOCK_BYTES = 64
_CHACHA_MAX_BLOCKS = 1 << 32  # 32-bit block counter
_CHUNK_BYTES = 1 << 22
_ZERO_NONCE = bytes(16)  # the key is fresh per (seed, purpose, session, round)


class MaskPurpose(enum.Enum):
    """What a keystream is for; part of the key derivation, so purposes never share a stream."""

    SELF = "self-mask"
    PAIRWISE = "pairwise-mask"
    GRAPH = "neighbour-graph"


def derive_stream_key(
    seed: bytes, purpose: MaskPurpose, session_id: bytes, round_number: int
) -> bytes:
    """The ChaCha20 key for one (seed, purpose, session, round)."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"mask seeds must be {SEED_BYTES} bytes, got {len(seed)}")
    if round_number < 0:
        raise SecAggError(f"round number must be non-negative, got {round_number}")
    info = b"|".join(
        [
            b"bastion-secagg/v1/prg",
            purpose.value.encode(),
            session_id.hex().encode(),
            str(round_number).encode(),
        ]
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)


def keystream(key: bytes, nbytes: int) -> bytes:
    """``nbytes`` of ChaCha20 keystream under ``key`` (zero nonce, counter from 0)."""
    if nbytes > _CHACHA_MAX_BLOCKS * _CHACHA_BLOCK_BYTES:
        raise SecAggError(f"a mask of {nbytes} bytes exceeds one ChaCha20 stream (256 GiB)")
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    parts = []
    remaining = nbytes
    while remaining > 0:
        size = min(remaining, _CHUNK_BYTES)
        parts.append(encryptor.update(bytes(size)))
        remaining -= size
    return b"".join(parts)


def expand_mask(
    seed: bytes,
    length: int,
    dtype: np.dtype,
    purpose: MaskPurpose,
    session_id: bytes,
    round_number: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``length`` uniformly random ring words of ``dtype`` derived from a 256-bit ``seed``.

    The keystream is written straight into ``out`` (or a new array), read as little-endian
    words; passing the same scratch array for every mask keeps a client's memory at a
    couple of model-sized buffers however many peers it masks with.
    """
    if length < 0:
        raise SecAggError(f"mask length must be non-negative, got {length}")
    word = np.dtype(dtype)
    if word.kind != "u":
        raise SecAggError(f"masks are unsigned ring words, got dtype {word}")
    if out is None:
        out = np.empty(length, dtype=word)
    elif out.shape != (length,) or out.dtype != word or not out.flags.c_contiguous:
        raise SecAggError(f"mask buffer must be a contiguous {word} vector of length {length}")
    nbytes = length * word.itemsize
    if nbytes > _CHACHA_MAX_BLOCKS * _CHACHA_BLOCK_BYTES:
        raise SecAggError(f"a mask of {nbytes} bytes exceeds one ChaCha20 stream (256 GiB)")
    key = derive_stream_key(seed, purpose, session_id, round_number)
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    view = out.data.cast("B")
    zeros = bytes(min(nbytes, _CHUNK_BYTES))
    for offset in range(0, nbytes, _CHUNK_BYTES):
        size = min(_CHUNK_BYTES, nbytes - offset)
        encryptor.update_into(zeros[:size], view[offset : offset + size])
    if sys.byteorder == "big":  # the stream is defined as little-endian words
        out.byteswap(inplace=True)
    return out
