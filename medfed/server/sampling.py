"""Which sites train in a round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medfed.types import SiteId


def sample_sites(sites: Sequence[SiteId], fraction: float, rng: np.random.Generator) -> list[SiteId]:
    """max(1, ceil(fraction * K)) sites without replacement, kept in their configured order."""
    if fraction >= 1:
        return list(sites)
    k = max(1, math.ceil(fraction * len(sites)))
    chosen = set(rng.choice(len(sites), size=k, replace=False).tolist())
    return [s for i, s in enumerate(sites) if i in chosen]
