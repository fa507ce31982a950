"""The sections of a deployment's report (`medfed report STATE` on a `medfed server` state folder).

A deployment has no per-image score at the coordinator: the results are the pooled metrics the
sites' aggregates give (with the AUC's CI and the stated bin error), each hospital's own test
metrics, and with baselines each hospital's paired "federated vs my local model" test. Panels that
need per-image scores (ROC curves, calibration, Grad-CAM) say why they are not drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medfed.report import formatting as fmt
from medfed.report.html import Section
from medfed.report.inputs import read_json, read_rounds
from medfed.report.many_sites import capped, name_list
from medfed.report.sections import (
    learning_section,
    operating_section,
    reading_section,
    traffic_section,
    verdict_line,
)

NO_IMAGES = ("Not drawn in a deployment: it needs each image's score, and no per-image score "
             "leaves a hospital. The pooled AUC and its CI are under Results.")


def deployment_sections(folder: Path) -> tuple[str, list[Section]]:
    summary = read_json(folder / "summary.json")
    histories = {summary["algorithm"]: read_rounds(folder / "rounds.jsonl")}
    sections = [
        _overview(summary), reading_section(), _data(summary), learning_section(histories),
        Section("ROC curves").text(NO_IMAGES), _results(summary), _paired(summary),
        Section("Cross-site performance").text(
            "Each hospital scored the federated model on its own test split (Results); local "
            "models are not exchanged between hospitals in a deployment."),
        Section("Calibration").text(NO_IMAGES.replace("The pooled AUC and its CI are under "
                                                      "Results.", "")),
        _operating(summary),
        Section("Grad-CAM: where the model looks").text(
            "Not drawn in a deployment: the coordinator holds no image."),
        traffic_section(histories, [
            ("sent to sites", f"{summary.get('bytes_down', 0) / 1e6:.2f} MB"),
            ("received from sites (training)", f"{summary.get('bytes_up', 0) / 1e6:.2f} MB"),
            ("received from sites (final evaluation)",
             f"{sum(summary.get('evaluation', {}).get('bytes_up', {}).values()) / 1e3:.1f} kB"),
            ("wall time", fmt.seconds(summary.get("wall_seconds")))]),
    ]
    return f"medfed deployment report: {summary['algorithm']}, {len(summary['sites'])} hospitals", \
        sections


def _overview(summary: dict[str, Any]) -> Section:
    sites = list(summary.get("sites", {}))
    section = verdict_line(Section("Overview"), summary).facts([
        ("task", f"{summary['task']}: {', '.join(summary.get('class_names', []))}"),
        ("algorithm", f"{summary['algorithm']} (aggregator {summary.get('aggregator', 'mean')})"),
        ("model", f"{summary.get('model', '-')} ({summary.get('norm', '-')} norm)"),
        ("hospitals", f"{len(sites)}: {name_list(sites)}"),
        ("rounds", f"{summary['rounds']} x {summary.get('local_epochs', '-')} local epoch(s)"),
        ("test patients", f"{summary.get('n_test', '-')} (each hospital's own test split)"),
        ("wall time", fmt.seconds(summary.get("wall_seconds"))),
    ])
    baselines = ("; each hospital also trained a model on its own data alone, to answer whether "
                 "joining helped it" if "baselines" in summary else "")
    return section.caption("A deployed federation: each hospital trained on its own data and "
                           "scored the final model on its own test patients; the coordinator "
                           "combined the aggregates they sent" + baselines + ".")


def _data(summary: dict[str, Any]) -> Section:
    section = Section("Data at each site")
    section.caption("Split sizes each hospital reported when it connected; its images, labels and "
                    "paths stay at the hospital.")
    rows = [[site, str(e.get("n_train", "-")), str(e.get("n_val", "-")), str(e.get("n_test", "-"))]
            for site, e in summary.get("sites", {}).items()]
    return section.table(["site", "training", "validation", "test"], capped(rows, "summary.json"))


def _results(summary: dict[str, Any]) -> Section:
    section = Section("Results with confidence intervals")
    test = summary.get("test", {})
    evaluation = summary.get("evaluation", {})
    section.caption("Pooled: every hospital's test patients together, from the per-site score "
                    "histograms (threshold metrics exact; the AUC within "
                    f"{fmt.num(evaluation.get('auc_error_bound'), 4)} of the exact pooled AUC); "
                    "95% CI by DeLong's method. Site mean: the average of the hospitals' own "
                    "figures.")
    rows = [["pooled", *_cells(test)], ["site mean", *_cells(summary.get("site_mean", {}))]]
    rows += capped([[site, *_cells(e.get("test") or {})] for site, e in summary.get("sites", {}).items()],
                   "summary.json's sites")
    section.table(["model on", "test AUC", "95% CI", "accuracy", "sensitivity", "specificity",
                   "F1"], rows)
    failed = evaluation.get("failed") or {}
    for site, why in failed.items():
        section.text(f"{site} did not score the final model: {why}")
    return section


def _cells(metrics: dict[str, Any]) -> list[str]:
    ci = fmt.ci(metrics["auc_ci"]) if metrics.get("auc_ci") else "-"
    return [fmt.num(metrics.get("auc")), ci, fmt.num(metrics.get("accuracy")),
            fmt.num(metrics.get("sensitivity")), fmt.num(metrics.get("specificity")),
            fmt.num(metrics.get("f1"))]


def _paired(summary: dict[str, Any]) -> Section:
    section = Section("Paired tests")
    local = summary.get("baselines", {}).get("local")
    if not local:
        return section.text("No local-only models: the federation ran without baselines, so "
                            "whether joining helped each hospital was not measured.")
    section.caption("Did joining help each hospital? Its federated and local-only models scored "
                    "the same test patients at the hospital; DeLong's paired test.")
    rows = []
    for site, entry in local.items():
        paired = entry.get("paired", {})
        if paired.get("method") == "DeLong":
            rows.append([site, fmt.num(entry["test"].get("auc")), fmt.num(paired["difference"]),
                         fmt.ci([paired["low"], paired["high"]]), fmt.p_value(paired["p_value"])])
        else:
            rows.append([site, fmt.num(entry["test"].get("auc")), "-", "-",
                         paired.get("reason", "-")])
    return section.table(["hospital", "local-only AUC", "federated − local", "95% CI", "DeLong p"],
                         capped(rows, "summary.json's baselines.local"))


def _operating(summary: dict[str, Any]) -> Section:
    """The pooled test rates at 0.5 and at the threshold the pooled validation histograms gave."""
    return operating_section({"pooled test set": (summary.get("test", {}),
                                                  summary.get("operating_point"))})
