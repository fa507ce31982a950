"""`medfed report DIR`: report.html of a `medfed run` or `medfed compare` folder, from disk alone.

A run folder holds summary.json, rounds.jsonl, predictions.npz and gradcam.npz; a compare folder
holds compare.json, rounds/<algorithm>-seed<k>.jsonl, predictions/seed<k>.npz and gradcam.npz.
Every section is always there: a panel that does not apply (binary-only panels of a multi-class
task, the cross-site matrix of a single run) says why in one sentence.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medfed.errors import MedfedError
from medfed.evaluation import statistics as st
from medfed.report import figures
from medfed.report.artifacts import read_predictions
from medfed.report.html import Section, page

SECTIONS = (
    "Overview", "How to read this report", "Data at each site", "Learning curves", "ROC curves",
    "Results with confidence intervals", "Paired tests", "Cross-site performance", "Calibration",
    "Operating point", "Grad-CAM: where the model looks", "Communication and wall time",
)
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
N_BOOT = 500  # bootstrap resamples for a run's intervals (compare.json carries its own)


def build_report(folder: str | Path) -> Path:
    """Write folder/report.html; raises MedfedError for a folder that is neither output."""
    folder = Path(folder)
    if (folder / "compare.json").is_file():
        title, sections = _compare_sections(folder)
    elif (folder / "summary.json").is_file():
        title, sections = _run_sections(folder)
    else:
        raise MedfedError(f"{folder} is neither a `medfed run` nor a `medfed compare` output "
                          "(no summary.json or compare.json)")
    path = folder / "report.html"
    path.write_text(page(title, sections), encoding="utf-8")
    return path


# --- shared pieces ---------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _ci(interval: Any) -> str:
    if not interval or any(v is None for v in interval):
        return "-"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _mean_sd(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def _p(value: Any) -> str:
    return "-" if value is None else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _reading() -> Section:
    section = Section("How to read this report")
    section.table(["term", "meaning"], [[k, v] for k, v in READING])
    return section


def _data_section(data: dict[str, Any], class_names: list[str], note: str = "") -> Section:
    section = Section("Data at each site")
    section.caption("How many patients each hospital holds and how often each label occurs there; "
                    "computed at each site, only these totals leave it." + note)
    rows = []
    for site, entry in data.items():
        labels = _label_counts(entry.get("label_counts", {}), class_names)
        rows.append([site, str(entry.get("n_train", "-")), str(entry.get("n_val", "-")),
                     str(entry.get("n_test", "-") or "-"), labels])
    section.table(["site", "training", "validation", "own test split", "training labels"], rows)
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


def _learning_section(histories: dict[str, list[dict[str, Any]]]) -> Section:
    section = Section("Learning curves")
    if not any(histories.values()):
        return section.text("No per-round history was saved.")
    section.caption("How the shared model improved round by round: validation AUC measured at each "
                    "site on its own data (higher is better) and the training loss (lower is "
                    "better). Curves that flatten mean more rounds would not help much.")
    return section.figure(figures.learning_curves(histories), "Validation AUC per site and training "
                                                              "loss per round.")


def _binary_only(heading: str, task: str) -> Section:
    return Section(heading).text(f"Not drawn: this panel needs a binary (disease / no disease) task; "
                                 f"this data set's task is {task}.")


def _roc_section(labels: np.ndarray, scores: dict[str, np.ndarray], note: str) -> Section:
    section = Section("ROC curves")
    section.caption("Each curve shows every trade-off between catching disease (up) and false alarms "
                    "(right) as the threshold moves; the closer to the top-left corner, the better. "
                    "Dashed: models trained at a single site. " + note)
    return section.figure(figures.roc_curves(labels, scores), "ROC curves on the held-out test set.")


def _calibration_figure(section: Section, labels: np.ndarray, scores: dict[str, np.ndarray],
                        note: str = "") -> None:
    section.caption("A well-calibrated model that says 30 % is right about 30 % of the time: its "
                    "points lie on the diagonal. Points below it mean the model overstates risk.")
    section.figure(figures.reliability_curves(labels, scores), f"Reliability curves (10 bins){note}.")


def _gradcam_section(folder: Path, class_names: list[str], skipped: str | None, model_note: str
                     ) -> Section:
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
                          "site; p = the model's probability of the positive class (binary) or of "
                          "its predicted class.")


def _traffic_section(histories: dict[str, list[dict[str, Any]]], facts: list[tuple[str, str]]
                     ) -> Section:
    section = Section("Communication and wall time")
    section.caption("What federation costs: the model weights sent to and received from the sites "
                    "each round (no patient data is sent), and how long each round took.")
    section.facts(facts)
    if any(histories.values()):
        section.figure(figures.per_round_traffic(histories), "Megabytes sent per round and seconds "
                                                             "per round.")
    return section


def _delong_rows(labels: np.ndarray, scores: dict[str, np.ndarray], subject: str) -> list[list[str]]:
    rows = []
    for other, score in scores.items():
        if other == subject:
            continue
        try:
            test = st.delong_test(labels, scores[subject], score)
        except ValueError:
            continue
        rows.append([f"{subject} vs {other}", _num(test.difference), _ci([test.low, test.high]),
                     _p(test.p_value), "-"])
    return rows


# --- a run folder ----------------------------------------------------------------------------

def _run_sections(folder: Path) -> tuple[str, list[Section]]:
    summary = _read_json(folder / "summary.json")
    task, classes = summary["task"], summary.get("class_names", [])
    binary = task == "binary"
    histories = {summary["algorithm"]: _read_rounds(folder / "rounds.jsonl")}
    labels, probs = (read_predictions(folder / "predictions.npz")
                     if (folder / "predictions.npz").is_file() else (None, {}))
    scores = {n: p[:, -1] for n, p in probs.items()} if binary and labels is not None else {}
    sites = list(summary.get("sites", {}))
    overview = Section("Overview").facts([
        ("data set", f"{summary['dataset']} ({task}: {', '.join(classes)})"),
        ("algorithm", f"{summary['algorithm']} (aggregator {summary.get('aggregator', 'mean')})"),
        ("model", summary.get("model", "-")),
        ("sites", f"{len(sites)} ({summary.get('partition', '-')}): {', '.join(sites)}"),
        ("rounds", f"{summary['rounds']} x {summary.get('local_epochs', '-')} local epoch(s)"),
        ("seed", str(summary.get("seed", "-"))),
        ("held-out test set", f"{summary.get('n_test', '-')} cases"),
        ("wall time", _seconds(summary.get("total_seconds"))),
    ])
    overview.caption("One federated training run (`medfed run`) beside its baselines: each site "
                     "alone and all data pooled. For several seeds and paired statistics, use "
                     "`medfed compare`.")
    data = summary.get("data_summary") or summary.get("sites", {})
    sections = [overview, _reading(), _data_section(data, classes), _learning_section(histories)]
    sections.append(_roc_section(labels, scores, "") if scores else _binary_only("ROC curves", task))
    sections.append(_run_results(summary, labels, scores))
    sections.append(_run_paired(labels, scores))
    sections.append(Section("Cross-site performance").text(
        "A single run does not score each local model at every site; `medfed compare` draws this "
        "matrix."))
    sections.append(_run_calibration(labels, scores, task))
    sections.append(_run_operating(summary.get("test", {})))
    sections.append(_gradcam_section(folder, classes, summary.get("gradcam_skipped"),
                                     "Computed with the final federated model."))
    sections.append(_traffic_section(histories, [
        ("sent to sites", f"{summary.get('bytes_down', 0) / 1e6:.2f} MB"),
        ("received from sites", f"{summary.get('bytes_up', 0) / 1e6:.2f} MB"),
        ("federated training", _seconds(summary.get("wall_seconds"))),
        ("whole run (with baselines)", _seconds(summary.get("total_seconds")))]))
    return f"medfed report: {summary['dataset']}, {summary['algorithm']}", sections


def _run_paired(labels: np.ndarray | None, scores: dict[str, np.ndarray]) -> Section:
    paired = Section("Paired tests")
    if scores and "federated" in scores:
        paired.caption("Is the federated model's AUC different from each baseline's on the same "
                       "test images? DeLong's test; a single run has no seeds for a t-test.")
        rows = _delong_rows(labels, scores, "federated")
        paired.table(["comparison", "AUC difference", "95% CI", "DeLong p", "t-test p"], rows)
    else:
        paired.text("No paired test: it needs a binary task and the baselines' predictions.")
    return paired


def _run_calibration(labels: np.ndarray | None, scores: dict[str, np.ndarray], task: str
                     ) -> Section:
    calibration = Section("Calibration")
    if scores:
        _calibration_figure(calibration, labels, scores)
    else:
        calibration.text(f"Reliability curves need a binary task (this one is {task}).")
    return calibration


def _run_operating(test: dict[str, Any]) -> Section:
    operating = Section("Operating point")
    operating.caption("At the default threshold (probability 0.5): how many diseased cases are "
                      "caught and how many healthy ones are cleared. `medfed compare` chooses the "
                      "threshold on validation data instead.")
    operating.table(["model", "threshold", "sensitivity", "specificity"],
                    [["federated", "0.5", _num(test.get("sensitivity")),
                      _num(test.get("specificity"))]])
    return operating


def _run_results(summary: dict[str, Any], labels: np.ndarray | None, scores: dict[str, np.ndarray]
                 ) -> Section:
    section = Section("Results with confidence intervals")
    section.caption("Each model on the same held-out test images. The 95% CI of the AUC is a "
                    f"bootstrap over the test images ({N_BOOT} resamples).")
    models = {"federated": summary["test"]}
    if "baselines" in summary:
        models["pooled"] = summary["baselines"]["pooled"]["test"]
        models |= {f"local:{s}": v["test"] for s, v in summary["baselines"]["local"].items()}
    rows = []
    rng = np.random.default_rng(0)
    for name, metrics in models.items():
        ci = "-"
        if name in scores and len(np.unique(labels)) == 2:
            interval = st.bootstrap_ci(labels, scores[name], st.auc, rng, N_BOOT)
            ci = _ci([interval.low, interval.high])
        rows.append([name, _num(metrics.get("auc")), ci, _num(metrics.get("accuracy")),
                     _num(metrics.get("sensitivity")), _num(metrics.get("specificity")),
                     _num(metrics.get("f1"))])
    section.table(["model", "test AUC", "95% CI", "accuracy", "sensitivity", "specificity", "F1"], rows)
    site_rows = []
    for site, entry in summary.get("sites", {}).items():
        val, test = entry.get("val") or {}, entry.get("test") or {}
        site_rows.append([site, _num(val.get("auc")), _num(test.get("auc")) if test else "-"])
    if site_rows:
        section.text("The federated model at each site, on the site's own validation split (and its "
                     "own test split when the sites are natural):")
        section.table(["site", "validation AUC", "own test AUC"], site_rows)
        aucs = [e.get("auc") for e in ((s.get("test") or s.get("val") or {})
                                       for s in summary["sites"].values()) if e.get("auc") is not None]
        if aucs:
            section.text(f"Worst site AUC {min(aucs):.3f}; gap between best and worst site "
                         f"{max(aucs) - min(aucs):.3f} (a large gap means the model is not equally "
                         "good for every hospital).")
    return section


# --- a compare folder ------------------------------------------------------------------------

def _compare_sections(folder: Path) -> tuple[str, list[Section]]:
    result = _read_json(folder / "compare.json")
    task, classes = result.get("task", "binary"), result.get("class_names", [])
    seed = result["seeds"][0]
    histories = {a: _read_rounds(folder / "rounds" / f"{a}-seed{seed}.jsonl")
                 for a in result["algorithms"]}
    pred_path = folder / "predictions" / f"seed{seed}.npz"
    labels, probs = read_predictions(pred_path) if pred_path.is_file() else (None, {})
    scores = ({n: p[:, -1] for n, p in probs.items()} if task == "binary" and labels is not None
              else {})
    sites = result.get("sites", [])
    overview = Section("Overview").facts([
        ("data set", f"{result.get('dataset', '-')} ({task}: {', '.join(classes)})"),
        ("algorithms", ", ".join(result["algorithms"]) + " against local-only and pooled"),
        ("model", result.get("model", "-")),
        ("sites", f"{len(sites)} ({result.get('partition', '-')}): {', '.join(sites)}"),
        ("rounds", f"{result.get('rounds', '-')} x {result.get('local_epochs', '-')} local epoch(s)"),
        ("seeds", ", ".join(str(s) for s in result["seeds"])),
        ("held-out test set", f"{result.get('n_test', '-')} cases"),
        ("operating point rule", _rule(result.get("operating_point_rule"))),
        ("wall time", _seconds(result.get("wall_seconds"))),
    ])
    overview.caption("Does federation beat training at one hospital, how close does it come to "
                     "pooling all data, how sure are we, and is it fair to every site? Every model "
                     "below was trained on the same partition for each seed.")
    sections = [overview, _reading(),
                _data_section(result.get("data_summary", {}), classes,
                              f" Shown for the first seed ({seed}); each seed draws its own partition."),
                _learning_section(histories)]
    sections.append(_roc_section(labels, scores, f"Seed {seed}.") if scores
                    else _binary_only("ROC curves", task))
    sections.append(_compare_results(result))
    sections.append(_compare_paired(result, task))
    sections.append(_compare_cross_site(result, task))
    sections.append(_compare_calibration(result, labels, scores, task, seed))
    sections.append(_compare_operating(result, task))
    sections.append(_gradcam_section(folder, classes, result.get("gradcam_skipped"),
                                     "Computed with the final {algorithm} model of "
                                     f"seed {seed}."))
    sections.append(_traffic_section(histories, [
        ("whole comparison", _seconds(result.get("wall_seconds"))),
        ("seeds", str(len(result["seeds"])))]))
    return f"medfed report: {result.get('dataset', 'comparison')}, " \
           f"{', '.join(result['algorithms'])} vs baselines", sections


def _compare_cross_site(result: dict[str, Any], task: str) -> Section:
    cross = Section("Cross-site performance")
    if result.get("cross_site"):
        matrix = np.array([[math.nan if v is None else v for v in row] for seed_matrix in
                           result["cross_site"]["auc"] for row in seed_matrix], np.float64)
        n = len(result["cross_site"]["sites"])
        mean = np.nanmean(matrix.reshape(-1, n, n), axis=0) if matrix.size else matrix
        cross.caption("Each row is a model trained at one hospital only, each column the hospital "
                      "where it was tested (mean over seeds). Bright diagonal, dark elsewhere: "
                      "models do not travel between hospitals, which is what federation addresses.")
        cross.figure(figures.cross_site_heatmap(result["cross_site"]["sites"],
                                                [[None if math.isnan(v) else float(v) for v in r]
                                                 for r in mean]),
                     "Cross-site AUC matrix.")
    else:
        cross.text(f"Not drawn: the cross-site matrix is computed for binary tasks (this one is "
                   f"{task}).")
    return cross


def _compare_calibration(result: dict[str, Any], labels: np.ndarray | None,
                         scores: dict[str, np.ndarray], task: str, seed: int) -> Section:
    calibration = Section("Calibration")
    if scores:
        _calibration_figure(calibration, labels, scores, f", seed {seed}; the table: all seeds")
        calibration.table(["model", "ECE mean ± sd"],
                          [[n, _mean_sd(e.get("ece"))] for n, e in result["configurations"].items()])
    else:
        calibration.text(f"Reliability curves need a binary task (this one is {task}).")
    return calibration


def _rule(rule: str | None) -> str:
    if rule == "youden":
        return "Youden's J: the threshold maximizing sensitivity + specificity"
    return rule or "-"


def _compare_results(result: dict[str, Any]) -> Section:
    section = Section("Results with confidence intervals")
    seeds = len(result["seeds"])
    section.caption(f"Test AUC over {seeds} seed(s): mean ± sd and 95% CI (over seeds; with one "
                    "seed, a bootstrap over test images). Site mean: the average over the hospitals' "
                    "own test splits. Worst site and gap: is the model fair to every hospital?")
    rows = []
    for name, entry in result["configurations"].items():
        test = entry["test"]
        rows.append([name, _mean_sd(test.get("auc")), _ci(test.get("auc", {}).get("ci95")),
                     _mean_sd(test.get("accuracy")), _mean_sd(test.get("sensitivity")),
                     _mean_sd(test.get("specificity")),
                     _mean_sd(entry.get("site_mean", {}).get("auc")),
                     _mean_sd(entry.get("worst_site_auc")), _mean_sd(entry.get("site_gap_auc"))])
    return section.table(["model", "test AUC", "95% CI", "accuracy", "sensitivity", "specificity",
                          "site mean AUC", "worst site AUC", "best-worst gap"], rows)


def _compare_paired(result: dict[str, Any], task: str) -> Section:
    section = Section("Paired tests")
    paired = result.get("paired")
    if not paired:
        return section.text(f"No paired test: DeLong's test needs a binary task (this one is {task}).")
    section.caption("Each federated model against the pooled model and against the best single "
                    "hospital (chosen on validation data). DeLong: same test images, one row per "
                    "seed. t-test: test AUC across seeds.")
    rows = []
    for name, entry in paired.items():
        t_p = _p(entry["t_test"]["p_value"]) if "t_test" in entry else "-"
        for k, test in enumerate(entry["delong"]):
            against = "" if test["against"] == "pooled" else f" ({test['against']})"
            rows.append([f"{name.replace('best_local', 'best single site')}{against}, "
                         f"seed {result['seeds'][k]}",
                         _num(test["difference"]), _ci([test["low"], test["high"]]),
                         _p(test["p_value"]), t_p if k == 0 else ""])
    return section.table(["comparison", "AUC difference", "95% CI", "DeLong p", "t-test p"], rows)


def _compare_operating(result: dict[str, Any], task: str) -> Section:
    section = Section("Operating point")
    rows = [[n, _mean_sd(e["operating_point"]["threshold"]),
             _mean_sd(e["operating_point"]["sensitivity"]),
             _mean_sd(e["operating_point"]["specificity"])]
            for n, e in result["configurations"].items() if "operating_point" in e]
    if not rows:
        return section.text(f"No operating point: it is chosen for binary tasks (this one is {task}).")
    section.caption(f"The threshold is chosen on validation data ({_rule(result.get('operating_point_rule'))}"
                    "), never on the test set; then sensitivity and specificity are measured on the "
                    "test images at that threshold.")
    return section.table(["model", "threshold", "test sensitivity", "test specificity"], rows)
