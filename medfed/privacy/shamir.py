"""Shamir secret sharing (Shamir, CACM 1979) over the prime field GF(2^521 - 1).

A secret s (up to 64 bytes, read as an integer) is the constant term of a random polynomial f of
degree t - 1; share i is (i, f(i)) for i = 1..n. Any t shares give s back by Lagrange interpolation
at 0; t - 1 shares reveal nothing about it. The coefficients come from `secrets` (a cryptographic
random source), never from a seeded generator.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from medfed.errors import MedfedError

PRIME = 2 ** 521 - 1  # a Mersenne prime, larger than any 64-byte secret
SECRET_BYTES = 64
SHARE_BYTES = 68  # ceil(521 / 8) = 66, rounded up


class SharingError(MedfedError):
    """Too few or inconsistent shares to reconstruct a secret."""


@dataclass(frozen=True)
class Share:
    x: int  # the evaluation point, 1..n (never 0: f(0) is the secret)
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, blob: bytes) -> Share:
        return cls(int.from_bytes(blob[:4], "big"), int.from_bytes(blob[4:], "big"))


def split(secret: bytes, n: int, threshold: int) -> list[Share]:
    """n shares of `secret`, any `threshold` of which reconstruct it."""
    if not 1 <= threshold <= n:
        raise SharingError(f"threshold must be between 1 and the {n} shares, got {threshold}")
    if len(secret) > SECRET_BYTES:
        raise SharingError(f"a secret is at most {SECRET_BYTES} bytes, got {len(secret)}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in range(1, n + 1)]


def reconstruct(shares: Sequence[Share], threshold: int, length: int) -> bytes:
    """The secret of `length` bytes from at least `threshold` distinct shares."""
    points = {s.x: s.y for s in shares}
    if len(points) < threshold:
        raise SharingError(f"{len(points)} distinct shares, fewer than the threshold {threshold}")
    chosen = list(points.items())[:threshold]
    secret = 0
    for i, (x_i, y_i) in enumerate(chosen):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(chosen):
            if i != j:
                numerator = numerator * (-x_j) % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        secret = (secret + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 256 ** length:
        raise SharingError("the shares do not reconstruct a secret of the expected length")
    return secret.to_bytes(length, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    """f(x) mod PRIME by Horner's rule."""
    y = 0
    for c in reversed(coefficients):
        y = (y * x + c) % PRIME
    return y
