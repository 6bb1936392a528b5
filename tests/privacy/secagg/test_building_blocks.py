"""Quantization, the mask PRG, Shamir sharing and key derivation, each on its own."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.privacy.errors import QuantizationOverflow, SecAggAborted, SecAggError
from bastion.privacy.secagg import keys
from bastion.privacy.secagg.prg import MaskPurpose, expand_mask, keystream
from bastion.privacy.secagg.quantize import FixedPointQuantizer
from bastion.privacy.secagg.shamir import PRIME, ShamirError, Share, combine, split

# ------------------------------------------------------------------ quantization


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(4, 24),
    st.floats(0.01, 100.0),
    st.integers(0, 2**32 - 1),
)
def test_quantized_sum_is_within_the_documented_bound(
    count: int, bits: int, clip: float, seed: int
) -> None:
    quantizer = FixedPointQuantizer(clip=clip, bits=bits, modulus_bits=64)
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1.5 * clip, 1.5 * clip, size=(count, 16))
    total = np.zeros(16, dtype=np.uint64)
    for row in values:
        total += quantizer.quantize(row)
    recovered = quantizer.dequantize_sum(total, count)
    expected = np.clip(values, -clip, clip).sum(axis=0)
    assert np.max(np.abs(recovered - expected)) <= quantizer.error_bound(count) * (1 + 1e-9)


def test_overflow_is_refused_with_the_numbers() -> None:
    quantizer = FixedPointQuantizer(clip=1.0, bits=20, modulus_bits=32)
    assert quantizer.capacity == (2**32 - 1) // (2**20 - 1)
    quantizer.check_capacity(quantizer.capacity)
    with pytest.raises(QuantizationOverflow, match=r"4098 clients x 1048575"):
        quantizer.check_capacity(4098)


@pytest.mark.parametrize(
    ("clip", "bits", "modulus_bits"), [(0.0, 8, 32), (1.0, 32, 32), (1.0, 8, 16), (1.0, 60, 64)]
)
def test_unsound_quantizers_are_refused(clip: float, bits: int, modulus_bits: int) -> None:
    with pytest.raises(SecAggError):
        FixedPointQuantizer(clip=clip, bits=bits, modulus_bits=modulus_bits)


def test_nan_cannot_be_quantized() -> None:
    with pytest.raises(SecAggError, match="NaN"):
        FixedPointQuantizer(1.0).quantize(np.array([0.0, np.nan]))


# ------------------------------------------------------------------ PRG


def test_chacha20_keystream_matches_rfc_8439_all_zero_vector() -> None:
    # RFC 8439 appendix A.1, test vector 1: zero key, zero nonce, block counter 0.
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    assert keystream(bytes(32), 64) == expected


def test_masks_are_separated_by_purpose_round_and_session() -> None:
    seed = bytes(range(32))
    session = b"session-0123456789"

    def mask(purpose: MaskPurpose, round_number: int, session_id: bytes) -> bytes:
        return expand_mask(
            seed, 64, np.dtype(np.uint64), purpose, session_id, round_number
        ).tobytes()

    base = mask(MaskPurpose.SELF, 3, session)
    assert base == mask(MaskPurpose.SELF, 3, session)
    others = [
        mask(MaskPurpose.PAIRWISE, 3, session),
        mask(MaskPurpose.SELF, 4, session),
        mask(MaskPurpose.SELF, 3, b"session-other-0000"),
    ]
    assert all(other != base for other in others)


def test_short_seeds_are_refused() -> None:
    with pytest.raises(SecAggError, match="32 bytes"):
        expand_mask(b"\x01" * 4, 8, np.dtype(np.uint32), MaskPurpose.SELF, b"s" * 16, 0)


# ------------------------------------------------------------------ Shamir


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.data())
def test_any_t_shares_recover_the_secret(n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = split(secret, threshold, list(range(1, n + 1)))
    subset = data.draw(st.permutations(shares))[:threshold]
    assert combine(subset, threshold) == secret


def test_every_subset_of_t_shares_agrees() -> None:
    secret = bytes(range(32))
    shares = split(secret, 3, [2, 5, 7, 11, 13])
    for subset in itertools.combinations(shares, 3):
        assert combine(list(subset), 3) == secret


def test_fewer_than_t_shares_are_refused() -> None:
    shares = split(b"\xff" * 32, 4, [1, 2, 3, 4, 5])
    with pytest.raises(ShamirError, match="3 shares cannot recover"):
        combine(shares[:3], 4)
    with pytest.raises(ShamirError, match="same point"):
        combine([shares[0], shares[0], shares[1], shares[2]], 4)


def test_share_bytes_round_trip_and_reject_field_overflow() -> None:
    share = split(b"a" * 32, 2, [9, 10])[0]
    assert Share.from_bytes(share.to_bytes()) == share
    with pytest.raises(ShamirError):
        Share.from_bytes(Share(1, PRIME).to_bytes())
    with pytest.raises(ShamirError):
        Share.from_bytes(b"\x00" * 10)


def test_t_minus_one_shares_are_consistent_with_every_secret() -> None:
    """Perfect secrecy, concretely: t - 1 shares plus a made-up share fit any chosen secret."""
    shares = split(b"\x07" * 32, 3, [1, 2, 3])
    known = shares[:2]
    for candidate in (b"\x00" * 32, b"\x42" * 32):
        # Interpolating the known shares with (0, candidate) yields a valid degree-2 polynomial,
        # whose value at x = 3 is a share that "reconstructs" the candidate.
        points = [Share(1, known[0].y), Share(2, known[1].y)]
        value = int.from_bytes(candidate, "big")
        y3 = _lagrange_at(points + [Share(PRIME, value)], 3)  # x = p is x = 0 in the field
        assert combine([*known, Share(3, y3)], 3) == candidate


def _lagrange_at(points: list[Share], x: int) -> int:
    total = 0
    for i, a in enumerate(points):
        num, den = 1, 1
        for j, b in enumerate(points):
            if i != j:
                num = num * (x - b.x) % PRIME
                den = den * (a.x - b.x) % PRIME
        total = (total + a.y * num * pow(den, -1, PRIME)) % PRIME
    return total


# ------------------------------------------------------------------ keys


def test_pairwise_seeds_agree_between_the_two_clients() -> None:
    a, b = keys.RoundKeys.generate(), keys.RoundKeys.generate()
    session = b"s" * 16
    seed_ab = keys.pairwise_seed(a.s_private, b.s_public, session, 1, "alice", "bob")
    seed_ba = keys.pairwise_seed(b.s_private, a.s_public, session, 1, "bob", "alice")
    assert seed_ab == seed_ba and len(seed_ab) == 32
    share_key = keys.share_key(a.c_private, b.c_public, session, 1, "alice", "bob")
    assert share_key != seed_ab


def test_share_ciphertexts_are_bound_to_sender_and_recipient() -> None:
    key = b"k" * 32
    ciphertext = keys.encrypt_for(key, b"shares", b"s" * 16, 1, "alice", "bob")
    assert keys.decrypt_from(key, ciphertext, b"s" * 16, 1, "alice", "bob") == b"shares"
    with pytest.raises(SecAggAborted, match="failed authentication"):
        keys.decrypt_from(key, ciphertext, b"s" * 16, 1, "alice", "carol")
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    with pytest.raises(SecAggAborted):
        keys.decrypt_from(key, tampered, b"s" * 16, 1, "alice", "bob")


def test_low_order_peer_key_aborts_key_agreement() -> None:
    private = x25519.X25519PrivateKey.generate()
    with pytest.raises(SecAggAborted, match="key agreement failed"):
        keys.agree(private, bytes(32))
