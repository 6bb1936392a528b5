"""Shamir t-of-n secret sharing of short byte strings over the prime field GF(2^521 - 1).

Shamir 1979, "How to Share a Secret". A secret s (an integer below 2^256, e.g. a 32-byte
key) becomes the constant term of a random polynomial of degree t - 1; share i is the
polynomial at x = i. Any t shares give s back by Lagrange interpolation at 0; fewer
reveal nothing, and ``combine`` refuses them. The modulus is the Mersenne prime
2^521 - 1, comfortably above every 32-byte secret; coefficients come from ``secrets``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.privacy.errors import SecAggError

PRIME = (1 << 521) - 1
_Y_BYTES = (PRIME.bit_length() + 7) // 8
_X_BYTES = 2
SHARE_BYTES = _X_BYTES + _Y_BYTES
MAX_SHARES = (1 << (8 * _X_BYTES)) - 1
MAX_SECRET_BYTES = 64


class ShamirError(SecAggError):
    """Secret sharing was asked to do something that would be wrong or insecure."""


@dataclass(frozen=True)
class Share:
    """One evaluation point ``(x, y)`` of the sharing polynomial."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != SHARE_BYTES:
            raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        x = int.from_bytes(data[:_X_BYTES], "big")
        y = int.from_bytes(data[_X_BYTES:], "big")
        if x == 0 or y >= PRIME:
            raise ShamirError("share is outside the field (x = 0 or y >= p)")
        return cls(x, y)


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the shares at points ``xs`` recover it."""
    if not 0 < len(secret) <= MAX_SECRET_BYTES:
        raise ShamirError(f"secrets are 1 to {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    points = list(xs)
    if len(set(points)) != len(points) or any(not 0 < x <= MAX_SHARES for x in points):
        raise ShamirError(f"share points must be distinct integers in [1, {MAX_SHARES}]")
    if not 1 <= threshold <= len(points):
        raise ShamirError(f"threshold {threshold} must be between 1 and {len(points)} shares")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in points]


def combine(shares: Sequence[Share], threshold: int, secret_length: int = 32) -> bytes:
    """Recover a ``secret_length``-byte secret from at least ``threshold`` distinct shares."""
    distinct = {share.x: share for share in shares}
    if len(distinct) != len(shares):
        raise ShamirError("two shares have the same point; each holder contributes one share")
    if threshold < 1 or len(distinct) < threshold:
        raise ShamirError(
            f"{len(distinct)} shares cannot recover a secret shared with threshold {threshold}"
        )
    chosen = sorted(distinct.values(), key=lambda s: s.x)[:threshold]
    secret = _interpolate_at_zero(chosen)
    if secret >= 1 << (8 * secret_length):
        raise ShamirError("shares are inconsistent: they do not interpolate to a valid secret")
    return secret.to_bytes(secret_length, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result


def _interpolate_at_zero(shares: Sequence[Share]) -> int:
    total = 0
    for i, share in enumerate(shares):
        numerator, denominator = 1, 1
        for j, other in enumerate(shares):
            if i != j:
                numerator = numerator * other.x % PRIME
                denominator = denominator * (other.x - share.x) % PRIME
        total = (total + share.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total
