"""The operating point: the probability above which a binary model calls a case positive, chosen on
validation data (never on the test set) and then read on the test set.

One rule serves every place that picks a threshold: `medfed run` (the federated model and each
baseline, on raw validation scores), `medfed compare`, the model bundle, and a deployed federation
(on the sites' pooled score histograms, evaluation/federated.py). The rules themselves are
statistics.youden_threshold / threshold_for_sensitivity on raw scores and federated.choose_threshold
on histograms; this module applies an OperatingRule (operating_rule.py) with them and writes the
one record summary.json, compare.json and model.json share:

    {"rule": "youden" | "sensitivity >= S", "chosen_on": "...", "threshold": t,
     "sensitivity": test sensitivity at t, "specificity": test specificity at t}

A task without a single threshold (multi-class, ordinal: the argmax decides; multi-label: one
threshold per finding) gets {"threshold": None, "skipped": why} instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medfed.evaluation import federated, statistics
from medfed.evaluation.federated import ScoreSummary
from medfed.evaluation.operating_rule import OperatingRule
from medfed.types import Task

# Where a model's threshold is chosen (the record's "chosen_on"): a model meant for every site on all
# sites' validation splits, a site's local-only model on its own (the only data it could see).
ALL_SITES = "the sites' validation splits"
OWN_SITE = "its own site's validation split"
POOLED_SUMMARIES = "the sites' pooled validation scores"

def threshold(rule: OperatingRule, y_val: np.ndarray, score_val: np.ndarray) -> float:
    """The threshold on raw validation scores (binary labels 0/1, positive-class scores)."""
    if rule.target_sensitivity is None:
        return statistics.youden_threshold(y_val, score_val)
    return statistics.threshold_for_sensitivity(y_val, score_val, rule.target_sensitivity)


def threshold_of_summary(rule: OperatingRule, val: ScoreSummary) -> float:
    """The threshold on (pooled) validation histograms: a bin edge (federated.py)."""
    if rule.target_sensitivity is None:
        return federated.choose_threshold(val, "youden")
    return federated.choose_threshold(val, "sensitivity", rule.target_sensitivity)


def operating_point(rule: OperatingRule, val: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], chosen_on: str) -> dict[str, Any]:
    """val, test: (labels 0/1, positive-class scores). The threshold from val, the rates on test."""
    y_val, score_val = val
    if len(np.unique(y_val)) < 2:
        return skipped(f"one class only in {chosen_on}: no threshold can be chosen there")
    point = threshold(rule, y_val, score_val)
    sensitivity, specificity = statistics.rates_at(test[0], test[1], point)
    return record(rule, chosen_on, point, sensitivity, specificity)


def summary_operating_point(rule: OperatingRule, val: ScoreSummary, test: ScoreSummary,
                            chosen_on: str) -> dict[str, Any]:
    """The same from score histograms (a deployment: no per-image score leaves a site)."""
    if val.task is not Task.BINARY:
        return not_binary(str(val.task))
    if val.positives[0].sum() == 0 or val.negatives[0].sum() == 0:
        return skipped(f"one class only in {chosen_on}: no threshold can be chosen there")
    point = threshold_of_summary(rule, val)
    sensitivity, specificity = federated.rates_at(test, point)
    return record(rule, chosen_on, point, sensitivity, specificity)


def record(rule: OperatingRule, chosen_on: str, point: float, sensitivity: float,
           specificity: float) -> dict[str, Any]:
    return {"rule": rule.name, "chosen_on": chosen_on, "threshold": float(point),
            "sensitivity": sensitivity, "specificity": specificity}


def not_binary(task: str) -> dict[str, Any]:
    why = ("each finding is called at probability 0.5: a multi-label task has one threshold per "
           "finding" if task == str(Task.MULTILABEL) else
           f"a {task} task has no single threshold: the class with the highest probability is called")
    return skipped(why)


def skipped(why: str) -> dict[str, Any]:
    return {"threshold": None, "skipped": why}


def chosen(point: dict[str, Any] | None) -> bool:
    """Whether a record holds a threshold and its test rates (not a skipped one)."""
    return bool(point) and point.get("threshold") is not None
