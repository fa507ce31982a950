"""A deployed site's own report.html: how the federated model does on this hospital's patients,
and whether joining the federation helped compared with a model trained here alone.

Everything on the page was computed at the site, from the site's own test split; the page stays in
the site's state folder.
"""

from __future__ import annotations

from typing import Any

from medfed.report.formatting import num, p_value
from medfed.report.html import Section, page

SHOWN = ("auc", "accuracy", "sensitivity", "specificity", "f1", "loss")


def site_page(results: dict[str, Any]) -> str:
    site = results["site"]
    sections = [_overview(results), _results(results), _paired(results)]
    return page(f"medfed site report: {site}", sections)


def _overview(results: dict[str, Any]) -> Section:
    task = results["task"]
    section = Section("Overview")
    section.caption("This page was made at this hospital from its own test patients; none of the "
                    "images or per-patient scores behind it left the hospital.")
    section.facts([("site", results["site"]), ("task", f"{task['kind']}: {', '.join(task['classes'])}"),
                   ("algorithm", str(results["algorithm"])), ("rounds", str(results["rounds"])),
                   ("training / validation / test", (f"{results['n_train']} / {results['n_val']} / "
                                                    f"{results['n_test']}"))])
    return section


def _results(results: dict[str, Any]) -> Section:
    section = Section("Results on this site's test split")
    rows = [["federated"] + _cells(results["federated"]["test"])]
    local = results.get("local")
    if local:
        rows.append(["local only (this site alone)"] + _cells(local["test"]))
    section.table(["model", "AUC [95% CI]", *SHOWN[1:]], rows)
    if not local:
        section.text("No local-only model was trained (the federation ran without baselines), so "
                     "there is nothing to compare the federated model with here.")
    return section


def _cells(metrics: dict[str, Any]) -> list[str]:
    auc = num(metrics.get("auc"))
    if metrics.get("auc_ci"):
        low, high = metrics["auc_ci"]
        auc = f"{auc} [{num(low)}, {num(high)}]"
    return [auc, *(num(metrics.get(k)) for k in SHOWN[1:])]


def _paired(results: dict[str, Any]) -> Section:
    section = Section("Did joining the federation help this hospital?")
    local = results.get("local")
    if not local:
        return section.text("Not measured: run the federation with baselines = true.")
    paired = local["paired"]
    if paired.get("method") != "DeLong":
        return section.text(f"No paired test: {paired.get('reason', 'not available')}.")
    section.caption("Both models scored the same test patients of this hospital; DeLong's test "
                    "asks whether their AUCs differ by more than chance would explain.")
    section.table(["federated − local AUC", "95% CI", "DeLong p"],
                  [[num(paired["difference"]), f"[{num(paired['low'])}, {num(paired['high'])}]",
                    p_value(paired["p_value"])]])
    verdict = ("joining helped" if paired["low"] > 0 else "joining did worse" if paired["high"] < 0
               else "no significant difference")
    return section.text(f"Verdict at the 5% level: {verdict}.")
