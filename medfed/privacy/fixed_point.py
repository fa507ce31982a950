"""Fixed-point encoding of real vectors into the ring Z_{2^64}, where masks cancel exactly.

A real x becomes round(x * scale) mod 2^64 (two's complement in a uint64). Sums wrap modulo 2^64,
so a masked sum is exact; read back as a signed integer it is the true sum as long as
|sum| * scale < 2^63. `check_bound` enforces a per-site bound that makes that hold for n sites:
|x| * scale <= 2^62 / n for every coordinate of every site. The rounding error of one coordinate
is at most 1 / (2 scale) per site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfed.errors import MedfedError

RING_BITS = 64


class FixedPointError(MedfedError):
    """A value too large for the ring: the sum of the sites could wrap around."""


@dataclass(frozen=True)
class FixedPoint:
    scale: float = 2.0 ** 24  # resolution 6e-8; the bound below leaves ~2^38 / n for |x|
    sites: int = 1  # how many vectors will be summed

    @property
    def bound(self) -> float:
        """Largest |x| a site may encode so that the sum of `sites` vectors cannot wrap."""
        return 2.0 ** (RING_BITS - 2) / self.sites / self.scale

    def check_bound(self, x: np.ndarray) -> None:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if not np.isfinite(peak) or peak > self.bound:
            raise FixedPointError(f"value {peak:.3g} exceeds the fixed-point bound {self.bound:.3g} "
                                  f"for {self.sites} sites at scale {self.scale:g}; lower the scale")

    def encode(self, x: np.ndarray) -> np.ndarray:
        """float array -> uint64 ring elements (after check_bound)."""
        self.check_bound(x)
        return np.rint(np.asarray(x, np.float64) * self.scale).astype(np.int64).view(np.uint64)

    def decode(self, ring: np.ndarray) -> np.ndarray:
        """uint64 ring elements (a sum of at most `sites` encodings) -> float64 array."""
        return np.asarray(ring, np.uint64).view(np.int64).astype(np.float64) / self.scale


def ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """Sum modulo 2^64 (numpy's uint64 arithmetic wraps, which is exactly the ring's addition)."""
    total = np.zeros_like(vectors[0], dtype=np.uint64)
    for v in vectors:
        total += v
    return total
