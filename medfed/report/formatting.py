"""How the report writes a number: one place, so every table of both kinds of report spells
missing values, intervals, p-values and durations the same way (and html.NUMERIC right-aligns them).

A missing or undefined value (None, NaN: a metric a site could not compute) is written "-".
"""

from __future__ import annotations

import math
from typing import Any


def num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def ci(interval: Any) -> str:
    if not interval or any(v is None for v in interval):
        return "-"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def mean_sd(entry: dict[str, Any] | None) -> str:
    """A compare.json summary over seeds, {"mean": ..., "sd": ...}, as "mean ± sd"."""
    if not entry or entry.get("mean") is None:
        return "-"
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def p_value(value: Any) -> str:
    return "-" if value is None else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def seconds(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"
