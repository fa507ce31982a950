"""Clinical metrics against scikit-learn (the reference) and a hand-made confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medfed.evaluation.metrics import METRIC_KEYS, compute_metrics
from medfed.types import Task


def softmax_probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    logits = rng.normal(size=(n, c))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def binary_probs(p_positive: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_positive, p_positive], axis=1)


@given(seed=st.integers(0, 10_000), n=st.integers(4, 200))
def test_binary_matches_scikit_learn(seed, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    probs = softmax_probs(rng, n, 2)
    m = compute_metrics(Task.BINARY, y, probs)
    pred = (probs[:, 1] >= 0.5).astype(int)
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["sensitivity"] == pytest.approx(r)
    assert m["n"] == n


def test_binary_sensitivity_and_specificity_from_a_hand_made_confusion_matrix():
    # TP=3, FN=1, TN=4, FP=2
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([.9, .8, .6, .2, .1, .3, .4, .45, .7, .95])
    m = compute_metrics(Task.BINARY, y, binary_probs(p))
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert m["accuracy"] == pytest.approx(7 / 10)


def test_binary_threshold_is_half_inclusive_and_positive_is_the_last_column():
    y = np.array([1, 0])
    m = compute_metrics(Task.BINARY, y, binary_probs(np.array([0.5, 0.49])))
    assert m["accuracy"] == 1.0 and m["sensitivity"] == 1.0 and m["specificity"] == 1.0


@given(seed=st.integers(0, 10_000), c=st.integers(3, 6))
def test_multiclass_matches_scikit_learn(seed, c):
    rng = np.random.default_rng(seed)
    n = 60
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    probs = softmax_probs(rng, n, c)
    m = compute_metrics(Task.MULTICLASS, y, probs)
    pred = probs.argmax(1)
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=np.arange(c), average="macro",
                                                 zero_division=0)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["sensitivity"] == pytest.approx(r)
    assert "kappa" not in m


def test_multiclass_specificity_by_hand():
    # rows: true class, columns: predicted class
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    m = compute_metrics(Task.MULTICLASS, y, probs)
    # class 0: TN=3 FP=0; class 1: TN=3 FP=1; class 2: TN=4 FP=1
    assert m["specificity"] == pytest.approx(np.mean([3 / 3, 3 / 4, 4 / 5]))
    assert m["sensitivity"] == pytest.approx(np.mean([2 / 3, 1 / 2, 1 / 1]))


@given(seed=st.integers(0, 10_000))
def test_multilabel_macro_auc_and_per_finding_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n, labels = 50, 4
    y = rng.integers(0, 2, (n, labels))
    y[0], y[1] = 0, 1
    probs = rng.random((n, labels))
    m = compute_metrics(Task.MULTILABEL, y.astype(np.float32), probs)
    pred = (probs >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean([accuracy_score(y[:, j], pred[:, j])
                                                   for j in range(labels)]))
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))


def test_multilabel_auc_skips_a_finding_with_one_class_only():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 3))
    y[0, :2], y[1, :2] = 0, 1
    y[:, 2] = 0  # finding 2 never present
    probs = rng.random((40, 3))
    m = compute_metrics(Task.MULTILABEL, y, probs)
    assert m["auc"] == pytest.approx(roc_auc_score(y[:, :2], probs[:, :2], average="macro"))


def test_auc_is_nan_when_only_one_class_is_present():
    y = np.ones(5, int)
    m = compute_metrics(Task.BINARY, y, binary_probs(np.linspace(0.1, 0.9, 5)))
    assert math.isnan(m["auc"])
    assert math.isnan(m["specificity"])  # no negatives: undefined
    assert m["sensitivity"] == pytest.approx(3 / 5)


def test_multiclass_auc_averages_the_classes_present_when_one_is_missing():
    # A small site split without grade 2: macro one-vs-rest over the classes it can be defined for.
    y = np.array([0, 1, 0, 1, 0, 1])
    probs = softmax_probs(np.random.default_rng(0), 6, 3)
    m = compute_metrics(Task.MULTICLASS, y, probs)
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in (0, 1)])
    assert m["auc"] == pytest.approx(expected)
    assert not math.isnan(m["accuracy"])


def test_multiclass_auc_is_nan_when_only_one_class_is_present():
    y = np.zeros(5, dtype=int)
    m = compute_metrics(Task.MULTICLASS, y, softmax_probs(np.random.default_rng(0), 5, 3))
    assert math.isnan(m["auc"])


def test_ordinal_has_quadratic_kappa_matching_scikit_learn():
    rng = np.random.default_rng(1)
    y = np.concatenate([np.arange(5), rng.integers(0, 5, 45)])
    probs = softmax_probs(rng, 50, 5)
    m = compute_metrics(Task.ORDINAL, y, probs)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, probs.argmax(1), weights="quadratic"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))


def test_perfect_ordinal_predictions_have_kappa_one():
    y = np.array([0, 1, 2, 3, 4, 4])
    m = compute_metrics(Task.ORDINAL, y, np.eye(5)[y])
    assert m["kappa"] == pytest.approx(1.0) and m["accuracy"] == 1.0


@pytest.mark.parametrize("task", list(Task))
def test_every_task_reports_every_metric_key(task):
    rng = np.random.default_rng(0)
    if task is Task.MULTILABEL:
        y, probs = rng.integers(0, 2, (20, 3)), rng.random((20, 3))
    else:
        c = 2 if task is Task.BINARY else 4
        y, probs = np.arange(20) % c, softmax_probs(rng, 20, c)
    m = compute_metrics(task, y, probs)
    assert set(METRIC_KEYS) | {"n"} <= set(m)
    assert all(isinstance(v, float) for v in m.values())
    assert ("kappa" in m) == (task is Task.ORDINAL)
