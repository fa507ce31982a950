"""The sections of a `medfed compare` report: several algorithms against the local-only and pooled
baselines over several seeds, from compare.json, rounds/<algorithm>-seed<k>.jsonl,
predictions/seed<k>.npz and gradcam.npz.

compare.json already carries the statistics over seeds (mean ± sd, intervals, DeLong and t-tests,
the cross-site matrix, the validation-chosen operating point), so these sections only lay them
out; the figures (curves, ROC, reliability) show the first seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medfed.pooled_record import pooled_label
from medfed.report import figures
from medfed.report import formatting as fmt
from medfed.report.html import Section
from medfed.report.inputs import read_json, read_rounds, read_scores
from medfed.report.sections import (
    binary_only,
    calibration_figure,
    data_section,
    gradcam_section,
    learning_section,
    reading_section,
    roc_section,
    traffic_section,
)


def compare_sections(folder: Path) -> tuple[str, list[Section]]:
    """The page title and every section (build.SECTIONS, in order) of a compare folder."""
    result = read_json(folder / "compare.json")
    task, classes = result.get("task", "binary"), result.get("class_names", [])
    seed = result["seeds"][0]
    histories = {a: read_rounds(folder / "rounds" / f"{a}-seed{seed}.jsonl") for a in result["algorithms"]}
    labels, scores = read_scores(folder / "predictions" / f"seed{seed}.npz", task)
    sections = [
        _overview(result), reading_section(),
        data_section(result.get("data_summary", {}), classes,
                     f" Shown for the first seed ({seed}); each seed draws its own partition."),
        learning_section(histories),
        roc_section(labels, scores, f"Seed {seed}.") if scores else binary_only("ROC curves", task),
        _results(result), _paired(result, task), _cross_site(result, task),
        _calibration(result, labels, scores, task, seed), _operating(result, task),
        gradcam_section(folder, classes, result.get("gradcam_skipped"),
                        "Computed with the final {algorithm} model of "  # filled in from gradcam.npz
                        f"seed {seed}."),
        traffic_section(histories, [("whole comparison", fmt.seconds(result.get("wall_seconds"))),
                                    ("seeds", str(len(result["seeds"])))]),
    ]
    title = (f"medfed report: {result.get('dataset', 'comparison')}, "
             f"{', '.join(result['algorithms'])} vs baselines")
    return title, sections


def _overview(result: dict[str, Any]) -> Section:
    task, classes = result.get("task", "binary"), result.get("class_names", [])
    sites = result.get("sites", [])
    overview = Section("Overview")
    for verdict in result.get("verdict", {}).values():
        overview.lead(verdict["text"])
    overview.facts([
        ("data set", f"{result.get('dataset', '-')} ({task}: {', '.join(classes)})"),
        ("algorithms", ", ".join(result["algorithms"]) + " against local-only and pooled"),
        ("model", result.get("model", "-")),
        ("sites", f"{len(sites)} ({result.get('partition', '-')}): {', '.join(sites)}"),
        ("rounds", f"{result.get('rounds', '-')} x {result.get('local_epochs', '-')} local epoch(s)"),
        ("seeds", ", ".join(str(s) for s in result["seeds"])),
        ("held-out test set", f"{result.get('n_test', '-')} cases"),
        ("operating point rule", _rule(result.get("operating_point_rule"))),
        ("wall time", fmt.seconds(result.get("wall_seconds"))),
    ])
    return overview.caption("Does federation beat training at one hospital, how close does it come "
                            "to pooling all data, how sure are we, and is it fair to every site? "
                            "Every model below was trained on the same partition for each seed.")


def _rule(rule: str | None) -> str:
    if rule == "youden":
        return "Youden's J: the threshold maximizing sensitivity + specificity"
    return rule or "-"


def _results(result: dict[str, Any]) -> Section:
    section = Section("Results with confidence intervals")
    seeds = len(result["seeds"])
    section.caption(f"Test AUC over {seeds} seed(s): mean ± sd and 95% CI (over seeds; with one "
                    "seed, a bootstrap over test images). Site mean: the average over the hospitals' "
                    "own test splits (site mean accuracy is the figure FLamby publishes). Worst site "
                    "and gap: is the model fair to every hospital?")
    rows = []
    for name, entry in result["configurations"].items():
        test, site_mean = entry["test"], entry.get("site_mean", {})
        label = pooled_label(entry) if name == "pooled" else name
        rows.append([label, fmt.mean_sd(test.get("auc")), fmt.ci(test.get("auc", {}).get("ci95")),
                     fmt.mean_sd(test.get("accuracy")), fmt.mean_sd(test.get("sensitivity")),
                     fmt.mean_sd(test.get("specificity")), fmt.mean_sd(site_mean.get("auc")),
                     fmt.mean_sd(site_mean.get("accuracy")),
                     fmt.mean_sd(entry.get("worst_site_auc")), fmt.mean_sd(entry.get("site_gap_auc"))])
    return section.table(["model", "test AUC", "95% CI", "accuracy", "sensitivity", "specificity",
                          "site mean AUC", "site mean accuracy", "worst site AUC", "best-worst gap"],
                         rows)


def _paired(result: dict[str, Any], task: str) -> Section:
    section = Section("Paired tests")
    paired = result.get("paired")
    if not paired:
        return section.text(f"No paired test: DeLong's test needs a binary task (this one is {task}).")
    section.caption("Each federated model against the pooled model and against the best single "
                    "hospital (chosen on validation data). DeLong: same test images, one row per "
                    "seed. t-test: test AUC across seeds.")
    rows = []
    for name, entry in paired.items():
        t_p = fmt.p_value(entry["t_test"]["p_value"]) if "t_test" in entry else "-"
        for k, test in enumerate(entry["delong"]):
            against = "" if test["against"] == "pooled" else f" ({test['against']})"
            rows.append([f"{name.replace('best_local', 'best single site')}{against}, "
                         f"seed {result['seeds'][k]}",
                         fmt.num(test["difference"]), fmt.ci([test["low"], test["high"]]),
                         fmt.p_value(test["p_value"]), t_p if k == 0 else ""])
    return section.table(["comparison", "AUC difference", "95% CI", "DeLong p", "t-test p"], rows)


def _cross_site(result: dict[str, Any], task: str) -> Section:
    cross = Section("Cross-site performance")
    if not result.get("cross_site"):
        return cross.text(f"Not drawn: the cross-site matrix is computed for binary tasks (this one "
                          f"is {task}).")
    cross.caption("Each row is a model trained at one hospital only, each column the hospital "
                  "where it was tested (mean over seeds). Bright diagonal, dark elsewhere: "
                  "models do not travel between hospitals, which is what federation addresses.")
    sites = result["cross_site"]["sites"]
    return cross.figure(figures.cross_site_heatmap(sites, _mean_matrix(result["cross_site"]["auc"],
                                                                       len(sites))),
                        "Cross-site AUC matrix.")


def _mean_matrix(per_seed: list[list[list[float | None]]], n: int) -> list[list[float | None]]:
    """The n x n cross-site AUC matrices of every seed averaged, ignoring undefined entries (None)."""
    matrix = np.array([[math.nan if v is None else v for v in row] for seed_matrix in per_seed
                       for row in seed_matrix], np.float64)
    mean = np.nanmean(matrix.reshape(-1, n, n), axis=0) if matrix.size else matrix
    return [[None if math.isnan(v) else float(v) for v in r] for r in mean]


def _calibration(result: dict[str, Any], labels: np.ndarray | None,
                 scores: dict[str, np.ndarray], task: str, seed: int) -> Section:
    calibration = Section("Calibration")
    if scores:
        calibration_figure(calibration, labels, scores, f", seed {seed}; the table: all seeds")
        calibration.table(["model", "ECE mean ± sd"],
                          [[n, fmt.mean_sd(e.get("ece"))] for n, e in result["configurations"].items()])
    else:
        calibration.text(f"Reliability curves need a binary task (this one is {task}).")
    return calibration


def _operating(result: dict[str, Any], task: str) -> Section:
    section = Section("Operating point")
    rows = [[n, fmt.mean_sd(e["operating_point"]["threshold"]),
             fmt.mean_sd(e["operating_point"]["sensitivity"]),
             fmt.mean_sd(e["operating_point"]["specificity"])]
            for n, e in result["configurations"].items() if "operating_point" in e]
    if not rows:
        return section.text(f"No operating point: it is chosen for binary tasks (this one is {task}).")
    section.caption(f"The threshold is chosen on validation data ({_rule(result.get('operating_point_rule'))}"
                    "), never on the test set; then sensitivity and specificity are measured on the "
                    "test images at that threshold.")
    return section.table(["model", "threshold", "test sensitivity", "test specificity"], rows)
