"""How the report and the console show per-site figures when a federation has many sites.

Up to SHOWN sites (the usual 3 to 10 hospitals), every site keeps its own row, line, curve or
Grad-CAM panel. Beyond that one element per site helps nobody: a legend of 100 names, a Grad-CAM
grid of 100 rows (which took more time than the training of a 100-site run), a table nobody scrolls.
So tables list SHOWN sites and end with a row saying how many more there are and where they are,
figures draw a band over all sites rather than a line each, and of the local-only models the best,
the worst and the one the verdict compares with stand for the rest. Nothing is lost: summary.json and rounds.jsonl keep every site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median
from typing import Any, TypeVar

SHOWN = 12  # per-site rows and lines drawn one by one up to this many sites
LOCAL = "local:"  # the prefix of the local-only models' names
T = TypeVar("T")


def is_many(count: int) -> bool:
    return count > SHOWN


def capped(rows: list[list[str]], where: str) -> list[list[str]]:
    """The first SHOWN rows, then one row naming how many more there are and where they are."""
    if not is_many(len(rows)):
        return rows
    more = f"... and {len(rows) - SHOWN} more (every one in {where})"
    return rows[:SHOWN] + [[more] + [""] * (len(rows[0]) - 1)]


def name_list(names: Sequence[str]) -> str:
    """'a, b, c', or the first SHOWN names and how many more."""
    shown = ", ".join(names[:SHOWN])
    return f"{shown} and {len(names) - SHOWN} more" if is_many(len(names)) else shown


def shown_models(aucs: dict[str, float | None], keep: Sequence[str] = ()) -> list[str]:
    """The models a table or figure shows, in their order: every model but the local-only ones,
    and the local-only ones too up to SHOWN of them; beyond, the best and the worst by AUC and
    those named in `keep` (the single site the verdict compares with)."""
    local = [name for name in aucs if name.startswith(LOCAL)]
    if not is_many(len(local)):
        return list(aucs)
    scored = sorted((a, name) for name in local if (a := aucs[name]) is not None
                    and math.isfinite(a))
    picked = ({scored[0][1], scored[-1][1]} if scored else set(local[:1])) | set(keep)
    return [name for name in aucs if not name.startswith(LOCAL) or name in picked]


def verdict_local(summary: dict[str, Any]) -> list[str]:
    """The local-only model of the single site a run's verdict compares with (none: [])."""
    site = ((summary.get("verdict") or {}).get("vs_best_single_site") or {}).get("site")
    return [LOCAL + site] if site else []


def only_shown(items: dict[str, T], shown: Sequence[str]) -> dict[str, T]:
    """items without the local-only models that are not shown (other names pass as they are)."""
    return {name: v for name, v in items.items() if not name.startswith(LOCAL) or name in shown}


def hidden_local_note(aucs: dict[str, float | None], shown: Sequence[str],
                      keep: Sequence[str] = ()) -> str:
    """A sentence on the local-only models a table or figure leaves out ('' when none is); keep:
    as given to shown_models."""
    local = [name for name in aucs if name.startswith(LOCAL)]
    hidden = [aucs[name] for name in local if name not in shown]
    if not hidden:
        return ""
    known = [a for a in hidden if a is not None and math.isfinite(a)]
    spread = (f" (test AUC median {median(known):.3f}, from {min(known):.3f} to {max(known):.3f})"
              if known else "")
    verdict = ", and the single site the verdict compares with" if keep else ""
    return (f"Of the {len(local)} local-only models {len(local) - len(hidden)} are shown (the best "
            f"and the worst on the test set{verdict}); the other {len(hidden)}{spread} are in "
            "summary.json's baselines.local.")
