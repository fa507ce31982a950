"""Console tables: a site's name is never cut, whatever the terminal's width; the results table
shows the rates at 0.5 beside those at the validation-chosen threshold; the verdict line prints as
it is written (its brackets are not taken for markup).

Hand mutations that must fail a test here: print the table with console.print (rich shortens the
name with an ellipsis); print it at a width wider than the console's without widening the console
(rich clamps it); escape nothing in the verdict."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from medfed.compare import _table
from medfed.console import name_column, print_table, print_verdict, results_table, threshold_caption

LONG = "hospital-university-of-xyz-north"


def rendered(table: Table, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    print_table(console, table)
    return console.export_text()


def run_rows(site: str) -> dict:
    point = {"threshold": 0.31, "sensitivity": 0.82, "specificity": 0.77}
    metrics = {"auc": 0.9, "accuracy": 0.7, "sensitivity": 0.0, "specificity": 1.0}
    return {"federated (fedavg)": (metrics, point), f"local {site}": (metrics, point)}


@pytest.mark.parametrize("width", [40, 60, 80, 200])
def test_a_long_site_name_is_never_cut(width):
    text = rendered(results_table(run_rows(LONG), "test"), width)
    assert f"local {LONG}" in text and "…" not in text


def test_a_table_of_short_names_keeps_within_80_columns():
    table = results_table(run_rows("site-a"), "held-out test set")
    table.caption = threshold_caption([p for _, p in run_rows("site-a").values()], "Youden's J")
    lines = rendered(table, 80).splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "0.310" in "".join(lines) and "0.820" in "".join(lines)  # threshold, sensitivity at it


def test_compare_and_data_check_tables_keep_names_whole():
    result = {"configurations": {f"local:{LONG}": {"test": {k: {"mean": 0.8, "sd": 0.01} for k in
                                                            ("auc", "accuracy", "sensitivity",
                                                             "specificity", "f1")}}}}
    assert f"local:{LONG}" in rendered(_table(result, "compare"), 50)
    table = Table()
    name_column(table, "site")
    table.add_column("images")
    table.add_row(LONG, "120")
    assert LONG in rendered(table, 20)


def test_a_task_without_a_threshold_says_why_under_the_table():
    skipped = {"threshold": None, "skipped": "a multi-class task has no single threshold"}
    assert threshold_caption([skipped, skipped], "Youden's J") == \
        "* no threshold: a multi-class task has no single threshold"


def test_the_verdict_prints_verbatim():
    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    text = "FedAvg vs best single site (a): +0.021 AUC [95% CI +0.004, +0.038], p = 0.012 (DeLong)"
    print_verdict(console, {"text": text})
    assert console.export_text().strip() == f"verdict {text}"
