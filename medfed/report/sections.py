"""The sections that a `medfed run` report and a `medfed compare` report draw the same way:
the reading guide, the data at each site, learning curves, ROC curves, the reliability figure,
Grad-CAM and communication; and what a run's and a deployment's reports share from summary.json:
the verdict line and the operating points. Each takes what both folders provide (per-site data, round histories,
test labels and scores, the folder itself) and returns an html.Section; what differs between the
two reports (which seed or model a panel shows, the traffic facts) is passed in by the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medfed.evaluation import statistics as st
from medfed.report import figures
from medfed.report import formatting as fmt
from medfed.report.html import Section
from medfed.report.many_sites import SHOWN, capped, hidden_local_note, shown_models

READING = [
    ("AUC", "the chance that the model scores a randomly chosen diseased case above a healthy one: "
            "0.5 is a coin toss, 1.0 is perfect."),
    ("95% CI", "the range that would contain the true value 95 times in 100; a wide interval means "
               "too few test cases (or seeds) to be sure."),
    ("mean ± sd", "the average over independent repeats (seeds) and how much they vary."),
    ("ECE", "expected calibration error: the average gap between the predicted probability of "
            "disease and how often disease is actually present; 0 is perfect."),
    ("DeLong p", "the probability of seeing an AUC difference at least this large on these test "
                 "images if the two models were equally good; below 0.05 is usually called "
                 "significant."),
    ("paired t-test p", "the same question asked across seeds (each seed trains both models)."),
    ("sensitivity / specificity", "the share of diseased cases the model flags / the share of "
                                  "healthy cases it clears, at the chosen threshold."),
    ("local:<site>", "a model trained only on that site's data; pooled: one model trained on all "
                     "sites' data in one place (what federation tries to match without moving data)."),
]


def reading_section() -> Section:
    section = Section("How to read this report")
    section.table(["term", "meaning"], [[k, v] for k, v in READING])
    return section


def data_section(data: dict[str, Any], class_names: list[str], note: str = "") -> Section:
    section = Section("Data at each site")
    section.caption("How many patients each hospital holds and how often each label occurs there; "
                    "computed at each site, only these totals leave it." + note)
    rows = []
    for site, entry in data.items():
        labels = _label_counts(entry.get("label_counts", {}), class_names)
        rows.append([site, str(entry.get("n_train", "-")), str(entry.get("n_val", "-")),
                     str(entry.get("n_test", "-") or "-"), labels])
    section.table(["site", "training", "validation", "own test split", "training labels"],
                  capped(rows, "summary.json"))
    if data and all("intensity_histogram" in e for e in data.values()):
        section.figure(figures.intensity_histograms(data),
                       "Intensity histograms: sites whose curves differ scanned or exported their "
                       "images differently, which federated models must cope with.")
    else:
        section.text("No intensity histogram: the data are tabular (no pixel intensities).")
    return section


def _label_counts(counts: Any, class_names: list[str]) -> str:
    if isinstance(counts, dict):
        return ", ".join(f"{k}: {v}" for k, v in counts.items())
    names = class_names if len(class_names) == len(counts) else [str(k) for k in range(len(counts))]
    return ", ".join(f"{n}: {c}" for n, c in zip(names, counts, strict=True))


def learning_section(histories: dict[str, list[dict[str, Any]]]) -> Section:
    section = Section("Learning curves")
    if not any(histories.values()):
        return section.text("No per-round history was saved.")
    section.caption("How the shared model improved round by round: validation AUC measured at each "
                    "site on its own data (higher is better) and the training loss (lower is "
                    "better). Curves that flatten mean more rounds would not help much.")
    return section.figure(figures.learning_curves(histories), "Validation AUC per site and training "
                                                              "loss per round.")


def drawn_scores(labels: np.ndarray, scores: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """The models a curve figure draws (many local-only models: the best and the worst) and a
    sentence on those left out ('' when none is)."""
    aucs = {name: st.auc(labels, score) for name, score in scores.items()}
    shown = shown_models(aucs)
    return {name: scores[name] for name in shown}, hidden_local_note(aucs, shown)


def binary_only(heading: str, task: str) -> Section:
    return Section(heading).text(f"Not drawn: this panel needs a binary (disease / no disease) task; "
                                 f"this data set's task is {task}.")


def roc_section(labels: np.ndarray, scores: dict[str, np.ndarray], note: str) -> Section:
    section = Section("ROC curves")
    section.caption("Each curve shows every trade-off between catching disease (up) and false alarms "
                    "(right) as the threshold moves; the closer to the top-left corner, the better. "
                    "Dashed: models trained at a single site. " + note)
    scores, hidden = drawn_scores(labels, scores)
    return section.figure(figures.roc_curves(labels, scores),
                          " ".join(filter(None, ["ROC curves on the held-out test set.", hidden])))


def calibration_figure(section: Section, labels: np.ndarray, scores: dict[str, np.ndarray],
                       note: str = "") -> None:
    section.caption("A well-calibrated model that says 30 % is right about 30 % of the time: its "
                    "points lie on the diagonal. Points below it mean the model overstates risk.")
    scores, hidden = drawn_scores(labels, scores)
    section.figure(figures.reliability_curves(labels, scores),
                   " ".join(filter(None, [f"Reliability curves (10 bins){note}.", hidden])))


def gradcam_section(folder: Path, class_names: list[str], skipped: str | None, model_note: str,
                    sites: int = 0) -> Section:
    """sites: how many the federation has (0: unknown), to say when the panels show fewer."""
    section = Section("Grad-CAM: where the model looks")
    path = folder / "gradcam.npz"
    if not path.is_file():
        return section.text(f"No Grad-CAM panels: {skipped or 'gradcam.npz was not saved'}.")
    with np.load(path) as f:
        panels = {k: f[k] for k in f.files}
    if "algorithm" in panels:  # compare: the first algorithm with a single model to explain
        model_note = model_note.format(algorithm=str(panels["algorithm"]))
    section.caption("Each pair shows a test image and, on the right, the regions that pushed the "
                    "model towards its answer (red = strongest). It shows what the model used, not "
                    "proof that it is right: check that red falls on anatomy, not on labels, "
                    "borders or markers. " + model_note)
    return section.figure(figures.gradcam_grid(panels, class_names),
                          f"Grad-CAM heat maps (layer {panels['layer']}) for a few test images per "
                          f"site{_first_sites(panels, sites)}; p = the model's probability of the "
                          "positive class (binary) or of its predicted class.")


def _first_sites(panels: dict[str, Any], sites: int) -> str:
    """' (the first 12 of 100 sites)' when the grid shows fewer sites than the federation has."""
    groups = [str(g) for g in panels["groups"]]
    drawn, total = min(len(groups), SHOWN), max(sites, len(groups))
    return "" if groups == ["test set"] or drawn == total else f" (the first {drawn} of {total} sites)"


def _recorded(histories: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """Which compression and which protection (secure aggregation, homomorphic encryption) the
    sites' updates used, as the rounds record them (none: no line)."""
    lines = []
    for key, label in (("compression", "updates compressed"), ("protection", "updates protected by")):
        used = sorted({r.get(key, "none") for h in histories.values() for r in h} - {"none"})
        lines += [(label, ", ".join(used))] if used else []
    return lines


def traffic_section(histories: dict[str, list[dict[str, Any]]], facts: list[tuple[str, str]]
                    ) -> Section:
    section = Section("Communication and wall time")
    section.caption("What federation costs: the model weights sent to and received from the sites "
                    "each round (no patient data is sent), and how long each round took.")
    section.facts(facts + _recorded(histories))
    if any(histories.values()):
        section.figure(figures.per_round_traffic(histories), "Megabytes sent per round and seconds "
                                                             "per round.")
    return section


def verdict_line(section: Section, summary: dict[str, Any]) -> Section:
    """summary.json's verdict, the page's first sentence (a summary without one: say so)."""
    verdict = summary.get("verdict") or {}
    return section.lead(verdict.get("text") or "No verdict: these results were written by a medfed "
                                               "version that did not record one.")


def operating_section(rows: dict[str, tuple[dict[str, Any], dict[str, Any] | None]]) -> Section:
    """rows: model -> (test metrics, operating point record): the test sensitivity and specificity
    at 0.5 and at the threshold chosen on validation data (evaluation/operating_point.py)."""
    section = Section("Operating point")
    points = [p for _, p in rows.values() if p]
    if points and all(p.get("threshold") is None for p in points):
        return section.text(f"No operating point: {points[0].get('skipped', 'none was chosen')}.")
    rule = next((p["rule"] for p in points if p.get("rule")), "youden")
    section.caption("How many diseased cases are caught (sensitivity) and how many healthy ones "
                    "are cleared (specificity), on the test set: at the default threshold 0.5, and "
                    f"at a threshold chosen on validation data ({_rule_words(rule)}), never on the "
                    "test set.")
    table = [[name, fmt.num(test.get("sensitivity")), fmt.num(test.get("specificity")),
              fmt.num((point or {}).get("threshold"), 4), (point or {}).get("chosen_on", "-"),
              fmt.num((point or {}).get("sensitivity")), fmt.num((point or {}).get("specificity"))]
             for name, (test, point) in rows.items()]
    return section.table(["model", "sensitivity at 0.5", "specificity at 0.5", "chosen threshold",
                          "chosen on", "sensitivity", "specificity"], table)


def _rule_words(rule: str) -> str:
    return "Youden's J: sensitivity + specificity - 1 highest" if rule == "youden" else (
        f"the highest threshold with validation {rule}")
