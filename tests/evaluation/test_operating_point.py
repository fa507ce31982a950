"""The operating point: chosen on validation scores, read on the test set, the same rule on raw
scores (`medfed run`, compare) and on score histograms (a deployment).

Hand mutations that must fail a test here: read the threshold on the test scores instead of the
validation ones; take the highest of tied Youden thresholds; take the lowest threshold reaching the
target sensitivity; accept --target-sensitivity 0 or above 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfed.errors import ConfigError
from medfed.evaluation.federated import summarize
from medfed.evaluation.operating_point import (
    ALL_SITES,
    POOLED_SUMMARIES,
    chosen,
    operating_point,
    summary_operating_point,
    threshold,
)
from medfed.evaluation.operating_rule import OperatingRule
from medfed.types import Task

# Validation: negatives 0.1 0.2 0.3 0.5, positives 0.45 0.6 0.7 0.8 0.9.
#   at 0.6:  sensitivity 4/5, specificity 4/4 -> J = 0.80 (the best)
#   at 0.45: sensitivity 5/5, specificity 3/4 -> J = 0.75
Y_VAL = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
S_VAL = np.array([0.1, 0.2, 0.3, 0.5, 0.45, 0.6, 0.7, 0.8, 0.9])
# Test: at 0.6 one of two positives is called (0.58 is not), both negatives cleared;
#       at 0.45 both positives are called and both negatives too (0.5, 0.55 >= 0.45).
Y_TEST = np.array([0, 0, 1, 1])
S_TEST = np.array([0.5, 0.55, 0.58, 0.95])


@pytest.mark.parametrize("target,expected", [(None, 0.6), (0.8, 0.6), (0.9, 0.45), (1.0, 0.45)])
def test_the_threshold_is_the_rules_answer_on_validation_scores(target, expected):
    assert threshold(OperatingRule(target), Y_VAL, S_VAL) == expected


def test_youden_picks_the_lowest_of_tied_thresholds():
    # J = 2/3 at 0.7 (sens 2/3, spec 1) and at 0.4 (sens 1, spec 2/3): the more sensitive wins
    y, s = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.5, 0.4, 0.7, 0.8])
    assert threshold(OperatingRule(), y, s) == 0.4


@pytest.mark.parametrize("target,sensitivity,specificity", [(None, 0.5, 1.0), (1.0, 1.0, 0.0)])
def test_test_rates_are_read_at_the_validation_threshold(target, sensitivity, specificity):
    point = operating_point(OperatingRule(target), (Y_VAL, S_VAL), (Y_TEST, S_TEST), ALL_SITES)
    assert point["sensitivity"] == sensitivity and point["specificity"] == specificity
    assert point["rule"] == ("youden" if target is None else "sensitivity >= 1")
    assert point["chosen_on"] == ALL_SITES and chosen(point)


def test_the_histogram_rule_agrees_with_the_raw_one():
    """A deployment chooses on binned scores: the lower edge of the bin holding the raw answer."""
    def probs(s):
        return np.stack([1 - s, s], 1).astype(np.float32)
    val, test = (summarize(Task.BINARY, y, probs(s), 0.0) for y, s in ((Y_VAL, S_VAL), (Y_TEST, S_TEST)))
    for target in (None, 0.9):
        raw = operating_point(OperatingRule(target), (Y_VAL, S_VAL), (Y_TEST, S_TEST), ALL_SITES)
        binned = summary_operating_point(OperatingRule(target), val, test, POOLED_SUMMARIES)
        assert raw["threshold"] - 0.006 < binned["threshold"] <= raw["threshold"]
        assert (binned["sensitivity"], binned["specificity"]) == (raw["sensitivity"], raw["specificity"])


def test_no_threshold_without_both_classes_or_for_a_multiclass_task():
    one_class = operating_point(OperatingRule(), (np.zeros(4, int), S_VAL[:4]), (Y_TEST, S_TEST),
                                ALL_SITES)
    assert one_class["threshold"] is None and "one class" in one_class["skipped"]
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    multi = summarize(Task.MULTICLASS, y, probs, 0.0)
    point = summary_operating_point(OperatingRule(), multi, multi, POOLED_SUMMARIES)
    assert point["threshold"] is None and "no single threshold" in point["skipped"]
    assert not chosen(point) and not chosen(None)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, math.nan, math.inf])
def test_a_target_sensitivity_outside_0_1_is_refused(bad):
    with pytest.raises(ConfigError, match=r"--target-sensitivity must be in \(0, 1\]"):
        OperatingRule(bad)


def test_the_rule_names_itself():
    assert OperatingRule().name == "youden" and "Youden" in OperatingRule().describe()
    assert OperatingRule(0.95).name == "sensitivity >= 0.95"
    assert "0.95" in OperatingRule(0.95).describe()
