"""Capping a site's share of a round's aggregation weight.

A site reports its own sample count, and a weighted mean gives it weight in proportion: a site
that claims most of the round's samples steers the model alone. With a cap s, no site's weight is
above s of the round's total: the largest counts are lowered to a common level c, chosen so that
c = s * (sum of the uncapped counts + m * c), m the number of capped sites (water-filling). When s
is below 1/n no weighting can meet it, and every site gets the same weight.
"""

from __future__ import annotations

from medfed.types import SiteId


def cap_weights(counts: dict[SiteId, int], share: float) -> dict[SiteId, int]:
    """The counts with none above `share` of their sum (integers; a capped count at least 1)."""
    if len(counts) * share <= 1:
        return {site: 1 for site in counts}
    capped: set[SiteId] = set()
    level = 0.0
    while True:
        free = sum(n for s, n in counts.items() if s not in capped)
        level = share * free / (1 - share * len(capped))
        over = {s for s, n in counts.items() if s not in capped and n > level}
        if not over:
            break
        capped |= over
    return {s: max(1, int(level)) if s in capped else n for s, n in counts.items()}
