"""Which compression a federation's updates use, parsed from `compress` (no torch here: configs
are checked before torch loads). compression.py does the compressing."""

from __future__ import annotations

import math
from dataclasses import dataclass

from medfed.errors import ConfigError

NONE, Q8, TOPK = "none", "q8", "topk"
VALID_FORMS = "none, q8 or topk:F with F a fraction in (0, 1), e.g. topk:0.1"


@dataclass(frozen=True)
class CompressionSpec:
    kind: str = NONE
    fraction: float = 1.0  # topk: the share of coordinates sent

    def __str__(self) -> str:
        return f"{TOPK}:{self.fraction:g}" if self.kind == TOPK else self.kind


def parse_compression(text: str) -> CompressionSpec:
    """'none', 'q8' or 'topk:F'; anything else is one ConfigError naming the valid forms."""
    if text in (NONE, Q8):
        return CompressionSpec(text)
    kind, _, value = text.partition(":")
    try:
        fraction = float(value) if kind == TOPK else math.nan
    except ValueError:
        fraction = math.nan
    if not 0 < fraction < 1:
        raise ConfigError(f"compress must be {VALID_FORMS}; got '{text}'")
    return CompressionSpec(TOPK, fraction)
