"""The sections of a `medfed run` report: one federated training run beside its baselines (each
site alone, all data pooled), from summary.json, rounds.jsonl, predictions.npz and gradcam.npz.

A run has a single seed, so what it reports differs from a comparison: its intervals are a
bootstrap over the test images computed here, its paired test is DeLong's alone, and it has no
cross-site matrix. The page opens with summary.json's verdict line; the operating points are
summary.json's, chosen on validation data by the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medfed.evaluation import statistics as st
from medfed.pooled_record import pooled_label
from medfed.report import formatting as fmt
from medfed.report.html import Section
from medfed.report.inputs import read_json, read_rounds, read_scores
from medfed.report.many_sites import (
    capped,
    hidden_local_note,
    is_many,
    name_list,
    only_shown,
    shown_models,
    verdict_local,
)
from medfed.report.sections import (
    binary_only,
    calibration_figure,
    data_section,
    gradcam_section,
    learning_section,
    operating_section,
    reading_section,
    roc_section,
    traffic_section,
    verdict_line,
)

N_BOOT = 500  # bootstrap resamples for a run's intervals (compare.json carries its own)


def run_sections(folder: Path) -> tuple[str, list[Section]]:
    """The page title and every section (build.SECTIONS, in order) of a run folder."""
    summary = read_json(folder / "summary.json")
    task, classes = summary["task"], summary.get("class_names", [])
    histories = {summary["algorithm"]: read_rounds(folder / "rounds.jsonl")}
    labels, scores = read_scores(folder / "predictions.npz", task)
    data = summary.get("data_summary") or summary.get("sites", {})
    shown, note = _shown(summary)
    drawn = only_shown(scores, shown)
    sections = [
        _overview(summary), reading_section(), data_section(data, classes),
        learning_section(histories),
        roc_section(labels, drawn, note) if scores else binary_only("ROC curves", task),
        _results(summary, labels, scores, shown, note), _paired(labels, drawn, note),
        Section("Cross-site performance").text(
            "A single run does not score each local model at every site; `medfed compare` draws "
            "this matrix."),
        _calibration(labels, drawn, task), _operating(summary, shown, note),
        gradcam_section(folder, classes, summary.get("gradcam_skipped"),
                        "Computed with the final federated model.", len(summary.get("sites", {}))),
        _traffic(summary, histories),
    ]
    return f"medfed report: {summary['dataset']}, {summary['algorithm']}", sections


def _shown(summary: dict[str, Any]) -> tuple[list[str], str]:
    """The models the tables and figures show (many local-only ones: the best, the worst and the
    verdict's single site) and the sentence on those left out ('' when none is)."""
    aucs = {name: metrics.get("auc") for name, metrics in _test_metrics(summary).items()}
    keep = verdict_local(summary)
    shown = shown_models(aucs, keep)
    return shown, hidden_local_note(aucs, shown, keep)


def _overview(summary: dict[str, Any]) -> Section:
    task, classes, sites = summary["task"], summary.get("class_names", []), list(summary.get("sites", {}))
    overview = verdict_line(Section("Overview"), summary).facts([
        ("data set", f"{summary['dataset']} ({task}: {', '.join(classes)})"),
        ("algorithm", f"{summary['algorithm']} (aggregator {summary.get('aggregator', 'mean')})"),
        ("model", summary.get("model", "-")),
        ("sites", f"{len(sites)} ({summary.get('partition', '-')}): {name_list(sites)}"),
        ("rounds", f"{summary['rounds']} x {summary.get('local_epochs', '-')} local epoch(s)"),
        ("seed", str(summary.get("seed", "-"))),
        ("held-out test set", f"{summary.get('n_test', '-')} cases"),
        ("wall time", fmt.seconds(summary.get("total_seconds"))),
    ])
    return overview.caption("One federated training run (`medfed run`) beside its baselines: each "
                            "site alone and all data pooled. For several seeds and paired "
                            "statistics, use `medfed compare`.")


def _results(summary: dict[str, Any], labels: np.ndarray | None, scores: dict[str, np.ndarray],
             shown: list[str], note: str) -> Section:
    section = Section("Results with confidence intervals")
    section.caption("Each model on the same held-out test images. The 95% CI of the AUC is a "
                    f"bootstrap over the test images ({N_BOOT} resamples).")
    section.table(["model", "test AUC", "95% CI", "accuracy", "sensitivity", "specificity", "F1"],
                  _model_rows(summary, only_shown(_test_metrics(summary), shown), labels, scores))
    if note:
        section.text(note)
    _per_site(section, summary.get("sites", {}))
    return section


def _test_metrics(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """model -> its test metrics: the federated model, pooled and each local model."""
    models = {"federated": summary["test"]}
    if "baselines" in summary:
        models["pooled"] = summary["baselines"]["pooled"]["test"]
        models |= {f"local:{s}": v["test"] for s, v in summary["baselines"]["local"].items()}
    return models


def _model_rows(summary: dict[str, Any], models: dict[str, dict[str, Any]],
                labels: np.ndarray | None, scores: dict[str, np.ndarray]) -> list[list[str]]:
    """Each model's test metrics and AUC bootstrap interval."""
    labels_of = {"pooled": pooled_label(summary.get("baselines", {}).get("pooled"))}
    rows = []
    rng = np.random.default_rng(0)
    for name, metrics in models.items():
        ci = "-"
        if name in scores and len(np.unique(labels)) == 2:
            interval = st.bootstrap_ci(labels, scores[name], st.auc, rng, N_BOOT)
            ci = fmt.ci([interval.low, interval.high])
        rows.append([labels_of.get(name, name), fmt.num(metrics.get("auc")), ci,
                     fmt.num(metrics.get("accuracy")), fmt.num(metrics.get("sensitivity")),
                     fmt.num(metrics.get("specificity")), fmt.num(metrics.get("f1"))])
    return rows


def _per_site(section: Section, sites: dict[str, Any]) -> None:
    """The federated model's AUC at each site (many sites: the worst first) and the gap between the
    best and the worst site."""
    if not sites:
        return
    many = is_many(len(sites))
    rows = []
    for site in sorted(sites, key=lambda s: _site_auc(sites[s])) if many else sites:
        val, test = sites[site].get("val") or {}, sites[site].get("test") or {}
        rows.append([site, fmt.num(val.get("auc")), fmt.num(test.get("auc")) if test else "-"])
    section.text("The federated model at each site, on the site's own validation split (and its "
                 "own test split when the sites are natural)" + (", worst first:" if many else ":"))
    section.table(["site", "validation AUC", "own test AUC"], capped(rows, "summary.json's sites"))
    aucs = [a for a in map(_site_auc, sites.values()) if math.isfinite(a)]
    if aucs:
        section.text(f"Worst site AUC {min(aucs):.3f}; gap between best and worst site "
                     f"{max(aucs) - min(aucs):.3f} (a large gap means the model is not equally "
                     "good for every hospital).")


def _site_auc(entry: dict[str, Any]) -> float:
    """The federated model's AUC at a site: on its own test split, else its validation split
    (inf when it has none, so such a site sorts last)."""
    auc = (entry.get("test") or entry.get("val") or {}).get("auc")
    return math.inf if auc is None else auc


def _paired(labels: np.ndarray | None, scores: dict[str, np.ndarray], note: str) -> Section:
    paired = Section("Paired tests")
    if scores and "federated" in scores:
        paired.caption("Is the federated model's AUC different from each baseline's on the same "
                       "test images? DeLong's test; a single run has no seeds for a t-test.")
        rows = _delong_rows(labels, scores, "federated")
        paired.table(["comparison", "AUC difference", "95% CI", "DeLong p", "t-test p"], rows)
        if note:
            paired.text(note)
    else:
        paired.text("No paired test: it needs a binary task and the baselines' predictions.")
    return paired


def _delong_rows(labels: np.ndarray, scores: dict[str, np.ndarray], subject: str) -> list[list[str]]:
    """DeLong's test of `subject` against every other model that it can be computed for."""
    rows = []
    for other, score in scores.items():
        if other == subject:
            continue
        try:
            test = st.delong_test(labels, scores[subject], score)
        except ValueError:
            continue
        rows.append([f"{subject} vs {other}", fmt.num(test.difference), fmt.ci([test.low, test.high]),
                     fmt.p_value(test.p_value), "-"])
    return rows


def _calibration(labels: np.ndarray | None, scores: dict[str, np.ndarray], task: str) -> Section:
    calibration = Section("Calibration")
    if scores:
        calibration_figure(calibration, labels, scores)
    else:
        calibration.text(f"Reliability curves need a binary task (this one is {task}).")
    return calibration


def _operating(summary: dict[str, Any], shown: list[str], note: str) -> Section:
    """The operating points of the federated model and the shown baselines."""
    section = operating_section(only_shown(_operating_rows(summary), shown))
    return section.text(note) if note else section


def _operating_rows(summary: dict[str, Any]) -> dict[str, tuple[dict, dict | None]]:
    """model -> (test metrics, operating point record): the federated model, then the baselines."""
    rows = {"federated": (summary.get("test", {}), summary.get("operating_point"))}
    baselines = summary.get("baselines", {})
    if "pooled" in baselines:
        rows[pooled_label(baselines["pooled"])] = (baselines["pooled"]["test"],
                                                   baselines["pooled"].get("operating_point"))
    rows |= {f"local:{s}": (e["test"], e.get("operating_point"))
             for s, e in baselines.get("local", {}).items()}
    return rows


def _traffic(summary: dict[str, Any], histories: dict[str, list[dict[str, Any]]]) -> Section:
    return traffic_section(histories, [
        ("sent to sites", f"{summary.get('bytes_down', 0) / 1e6:.2f} MB"),
        ("received from sites", f"{summary.get('bytes_up', 0) / 1e6:.2f} MB"),
        ("federated training", fmt.seconds(summary.get("wall_seconds"))),
        ("whole run (with baselines)", fmt.seconds(summary.get("total_seconds")))])
