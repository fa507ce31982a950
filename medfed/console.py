"""What a run prints when it ends: the verdict line, then the results table.

A table is printed at its natural width even when the terminal is narrower: rich would otherwise
shorten the widest cells with an ellipsis, and a hospital's name ("hospital-university-of-xyz-
north") cut to "hospital-univ…" names no hospital. A too-wide line wraps in the terminal, which
keeps every character; `print_table` is the one way medfed prints a table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

if TYPE_CHECKING:  # medfed.types loads torch; `medfed data check` prints tables without it
    from medfed.types import Metrics

TABLE_METRICS = ("auc", "accuracy", "sensitivity", "specificity")


def print_table(console: Console, table: Table) -> None:
    """The table at the width its cells need (at least the console's): no cell is cut."""
    natural = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    width = console.width
    console.width = max(width, natural)  # print() never renders wider than the console
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def name_column(table: Table, header: str) -> None:
    """A column of names (models, sites): never wrapped, never shortened."""
    table.add_column(header, no_wrap=True, overflow="ignore")


def print_verdict(console: Console, verdict: dict[str, Any]) -> None:
    console.print(f"[bold]verdict[/] {escape(verdict['text'])}", soft_wrap=True)


def results_table(rows: dict[str, tuple[Metrics, dict[str, Any] | None]], title: str) -> Table:
    """rows: model -> (test metrics, its operating point record or None): AUC and accuracy, the
    sensitivity and specificity at 0.5, then the threshold chosen on validation data and the test
    rates at it. Two-line headers keep it within 80 columns for names of up to 18 characters
    (F1 and the rest are in summary.json and the report)."""
    table = Table(title=title)
    name_column(table, "model")
    for header in ("auc", "acc.", "sens.\n@0.5", "spec.\n@0.5", "thr.*", "sens.\n@thr.",
                   "spec.\n@thr."):
        table.add_column(header, justify="right", no_wrap=True)
    for name, (metrics, point) in rows.items():
        point = point or {}
        table.add_row(name, *(_fmt(metrics.get(k)) for k in TABLE_METRICS),
                      *(_fmt(point.get(k)) for k in ("threshold", "sensitivity", "specificity")))
    return table


def threshold_caption(points: list[dict[str, Any] | None], rule_text: str) -> str:
    """The table's footnote: where the threshold comes from, or why there is none."""
    skipped = next((p["skipped"] for p in points if p and p.get("skipped")), None)
    if all(p and p.get("threshold") is None for p in points) and skipped:
        return f"* no threshold: {skipped}"
    return (f"* thr.: the threshold chosen on validation data by {rule_text} (federated and "
            "pooled: all sites' validation splits; local: its own site's); sensitivity and "
            "specificity are read on the test set at 0.5 and at thr.")


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
