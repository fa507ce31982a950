"""The verdict: did federation help? One line that opens the console and the report, e.g.

    FedAvg vs best single site (site-2): +0.021 AUC [95% CI +0.004, +0.038], p = 0.012 (DeLong);
    vs pooled: −0.004 [−0.019, +0.011], p = 0.61

- The best single site is the local-only model with the highest AUC on its own site's validation
  split (as `medfed compare` picks it): chosen without looking at the test set.
- Both comparisons are DeLong's paired test (statistics.delong_test) on the same test images.
- A multi-class task has no paired DeLong test here: the line gives the macro AUC differences
  and says so. Without baselines, or in a deployment (no per-image score reaches the
  coordinator, no data is pooled), the line says what it cannot compare.

summary.json's `verdict` holds the numbers and the line (`text`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from medfed.evaluation import statistics as st
from medfed.evaluation.metrics import compute_metrics
from medfed.types import Task

# The names the papers give the algorithms; an algorithm not listed keeps its own name.
DISPLAY = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedbn": "FedBN", "fedadam": "FedAdam",
           "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad", "fedavgm": "FedAvgM",
           "fednova": "FedNova", "scaffold": "SCAFFOLD", "swt": "SWT", "cwt": "CWT",
           "ensemble": "Ensemble"}
MINUS = "\u2212"  # a typographic minus: "−0.004" reads as a number, "-0.004" as a dash


def display_name(algorithm: str) -> str:
    return DISPLAY.get(algorithm, algorithm)


def best_by_validation(val_auc: dict[str, float]) -> str | None:
    """The key with the highest validation AUC (NaN counts as the lowest); None when empty."""
    if not val_auc:
        return None
    return max(val_auc, key=lambda k: -math.inf if math.isnan(val_auc[k]) else val_auc[k])


def run_verdict(algorithm: str, task: Task, labels: np.ndarray, federated: np.ndarray,
                pooled: np.ndarray | None, local: dict[str, tuple[np.ndarray, float]] | None
                ) -> dict[str, Any]:
    """federated, pooled: (N, C) test probabilities; local: site -> (its local-only model's test
    probabilities, its AUC on the site's own validation split); pooled and local None when the run
    had no baselines."""
    name = display_name(algorithm)
    if pooled is None or not local:
        return {"algorithm": name, "method": None, "vs_best_single_site": None, "vs_pooled": None,
                "text": f"{name}: not compared with a single site or with pooling (the run had no "
                        "baselines; drop --no-baselines to train them)"}
    site = best_by_validation({s: v for s, (_, v) in local.items()})
    compare = _delong if task is Task.BINARY else _auc_difference(task)
    best = compare(labels, federated, local[site][0]) | {
        "site": site, "chosen_by": "its own validation AUC", "validation_auc": local[site][1]}
    verdict = {"algorithm": name, "method": "DeLong" if task is Task.BINARY else None,
               "vs_best_single_site": best, "vs_pooled": compare(labels, federated, pooled)}
    return verdict | {"text": verdict_text(verdict)}


def _delong(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    y, score_a, score_b = labels.astype(int).reshape(-1), a[:, -1], b[:, -1]
    try:
        return vars(st.delong_test(y, score_a, score_b))
    except ValueError as exc:  # a test set without two cases of each class
        return {"difference": st.auc(y, score_a) - st.auc(y, score_b), "reason": str(exc)}


def _auc_difference(task: Task) -> Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]:
    """The macro AUC difference (metrics.compute_metrics' AUC); no paired test: DeLong's is for
    one binary score."""
    def compare(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        auc_a, auc_b = (compute_metrics(task, labels, p)["auc"] for p in (a, b))
        return {"difference": auc_a - auc_b,
                "reason": f"macro AUC; no paired test: DeLong's is for binary tasks, this is {task}"}
    return compare


def verdict_text(verdict: dict[str, Any], method: str = "DeLong") -> str:
    """The line from a verdict's numbers; method names the paired test."""
    best, pooled = verdict["vs_best_single_site"], verdict["vs_pooled"]
    line = (f"{verdict['algorithm']} vs best single site ({best['site']}): "
            f"{_difference(best, ' AUC', '95% CI ', method)}; vs pooled: "
            f"{_difference(pooled, '', '', '')}")
    if "p_value" not in best:
        line += f" ({best.get('reason', 'no paired test')})"
    return line


def _difference(test: dict[str, Any], unit: str, ci_label: str, method: str) -> str:
    """"+0.021 AUC [95% CI +0.004, +0.038], p = 0.012 (DeLong)" or, without a test, "+0.021 AUC"."""
    text = f"{signed(test['difference'])}{unit}"
    if "p_value" in test:
        text += (f" [{ci_label}{signed(test['low'])}, {signed(test['high'])}], "
                 f"p {p_text(test['p_value'])}")
        text += f" ({method})" if method else ""
    return text


def compare_verdict(algorithm: str, best: dict[str, Any], pooled: dict[str, Any]) -> dict[str, Any]:
    """`medfed compare`'s verdict for one algorithm from compare.json's paired entries ("delong":
    one test per seed, the best site chosen per seed on validation; "t_test": across seeds, when
    there are several): the t-test over seeds, or with one seed that seed's DeLong test."""
    seeds = len(best["delong"])
    sites = sorted({d["against"].removeprefix("local:") for d in best["delong"]})
    site = sites[0] if len(sites) == 1 else f"chosen per seed: {', '.join(sites)}"
    def pick(entry: dict[str, Any]) -> dict[str, Any]:
        return entry["t_test"] if "t_test" in entry else entry["delong"][0]
    verdict = {"algorithm": display_name(algorithm),
               "method": f"paired t-test over {seeds} seeds" if seeds > 1 else "DeLong",
               "vs_best_single_site": {**pick(best), "site": site}, "vs_pooled": pick(pooled)}
    return verdict | {"text": verdict_text(verdict, verdict["method"])}


def compare_verdicts(algorithms: list[str], task: str, paired: dict[str, Any] | None
                     ) -> dict[str, dict[str, Any]]:
    """compare.json's `verdict`: one per algorithm (paired: compare.json's `paired`, binary only)."""
    if paired is None:
        return {a: {"algorithm": display_name(a), "method": None, "vs_best_single_site": None,
                    "vs_pooled": None,
                    "text": f"{display_name(a)}: no paired test against the best single site or "
                            f"pooling for a {task} task (DeLong's is for binary tasks); the table "
                            "has each model's AUC"} for a in algorithms}
    return {a: compare_verdict(a, paired[f"{a} vs best_local"], paired[f"{a} vs pooled"])
            for a in algorithms}


def signed(value: float) -> str:
    """+0.021 / −0.004 (a typographic minus) / 0.000 for an exact zero."""
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:+.3f}"
    return "0.000" if text in ("+0.000", "-0.000") else text.replace("-", MINUS)


def p_text(p: float) -> str:
    """"= 0.012", "= 0.61", "< 0.001": two significant figures, as a reader quotes a p-value."""
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def deployment_verdict(algorithm: str, local: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A deployment's verdict from each hospital's own paired test (federated vs its local-only
    model on its own test patients, deploy/site_worker.py); local None without baselines. Neither
    the best single site nor pooling can be compared: no per-image score reaches the coordinator
    and no data is pooled."""
    name = display_name(algorithm)
    cannot = "vs best single site and vs pooled: not measurable in a deployment (no per-image " \
             "score leaves a hospital, no data is pooled)"
    tested = {s: e["paired"] for s, e in (local or {}).items() if "p_value" in e.get("paired", {})}
    verdict: dict[str, Any] = {"algorithm": name, "method": "DeLong" if tested else None,
                               "vs_best_single_site": None, "vs_pooled": None,
                               "vs_each_site": tested}
    if not tested:
        why = ("the federation ran without baselines" if not local
               else "no hospital could run a paired test")
        return verdict | {"text": f"{name}: not compared with each hospital's own model ({why}); "
                                  f"{cannot}"}
    diffs = [t["difference"] for t in tested.values()]
    higher = [t for t in tested.values() if t["difference"] > 0]
    lower = [t for t in tested.values() if t["difference"] < 0]
    text = (f"{name} vs each hospital's own model (DeLong at the hospital): higher AUC at "
            f"{len(higher)} of {len(tested)} (p < 0.05 at {_significant(higher)}), lower at "
            f"{len(lower)} (p < 0.05 at {_significant(lower)}), mean difference "
            f"{signed(float(np.mean(diffs)))}; {cannot}")
    return verdict | {"text": text}


def _significant(tests: list[dict[str, Any]]) -> int:
    return sum(t["p_value"] < 0.05 for t in tests)
