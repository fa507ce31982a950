"""Which sites train in a round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medfed.types import SiteId


def sample_sites(sites: Sequence[SiteId], fraction: float, rng: np.random.Generator,
                 minimum: int = 1) -> list[SiteId]:
    """max(minimum, ceil(fraction * K)) sites without replacement, in their configured order, so
    that a round can always reach min_sites usable updates if every sampled site delivers."""
    k = min(len(sites), max(minimum, math.ceil(fraction * len(sites))))
    if k == len(sites):
        return list(sites)
    chosen = set(rng.choice(len(sites), size=k, replace=False).tolist())
    return [s for i, s in enumerate(sites) if i in chosen]
