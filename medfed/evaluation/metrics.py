"""Clinical metrics with scikit-learn, one function for every task type.

Keys: auc, accuracy, precision, recall, f1, sensitivity, specificity, n (and kappa for ordinal).
- binary: the positive class is the last one; sensitivity = recall of it, specificity = recall of
  the negative class; threshold 0.5 on its probability.
- multi-class / ordinal: AUC is macro one-vs-rest; the others are macro averages over classes
  (sensitivity = macro recall, specificity = macro true-negative rate); ordinal adds quadratic kappa.
- multi-label: each finding is a binary problem at threshold 0.5; every metric is the macro mean
  over findings (accuracy too, as MedMNIST reports it).
A metric that is undefined on the given labels (AUC when only one class is present) is NaN.

Every threshold metric is a function of the confusion counts alone, and every AUC of the
per-output one-vs-rest AUCs: `metrics_from_confusion` holds those definitions once, so federated
evaluation (evaluation/federated.py), which pools counts instead of scores, reports the same values.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np

from medfed.types import Metrics, Task

METRIC_KEYS = ("auc", "accuracy", "precision", "recall", "f1", "sensitivity", "specificity")


def compute_metrics(task: Task, y_true: np.ndarray, probs: np.ndarray) -> Metrics:
    """probs: (N, C) class probabilities (softmax), or (N, L) per-finding probabilities (sigmoid)."""
    y = y_true.astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics become NaN / 0 by design, see above
        if task is Task.MULTILABEL:
            confusion = np.stack([binary_confusion(y[:, j], probs[:, j]) for j in range(y.shape[1])])
            aucs = [_auc(y[:, j], probs[:, j]) for j in range(y.shape[1])]
        elif task is Task.BINARY:
            confusion = binary_confusion(y, probs[:, -1])
            aucs = [_auc(y, probs[:, -1])]
        else:
            c = probs.shape[1]
            confusion = _sklearn().confusion_matrix(y, probs.argmax(1), labels=np.arange(c))
            aucs = [_auc((y == k).astype(int), probs[:, k]) for k in range(c)]
    out = metrics_from_confusion(task, confusion, np.array(aucs, dtype=np.float64))
    out["n"] = float(len(y_true))
    return out


def binary_confusion(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(2, 2) counts of (true, score >= 0.5): the one place the 0.5 threshold is applied."""
    return _sklearn().confusion_matrix(y, (score >= 0.5).astype(int), labels=[0, 1])


def metrics_from_confusion(task: Task, confusion: np.ndarray, aucs: np.ndarray) -> Metrics:
    """Every metric but n from confusion counts and per-output AUCs (NaN where undefined).

    confusion: binary (2, 2) of (true, called at 0.5); multi-class / ordinal (C, C) of (true,
    argmax); multi-label (L, 2, 2), one binary matrix per finding. aucs: binary (1,), else (C,) or
    (L,) one-vs-rest AUCs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics become NaN / 0 by design, see above
        if task is Task.MULTILABEL:
            per_finding = [_binary(cm, a) for cm, a in zip(confusion, aucs, strict=True)]
            return {k: float(np.nanmean([m[k] for m in per_finding])) for k in METRIC_KEYS}
        if task is Task.BINARY:
            return _binary(confusion, float(aucs[0]))
        out = _multiclass(confusion, float(np.nanmean(aucs)))
        if task is Task.ORDINAL:
            out["kappa"] = _kappa(confusion)
        return out


def _binary(confusion: np.ndarray, auc: float) -> Metrics:
    tn, fp, fn, tp = confusion.ravel()
    truth, called = _pairs(np.arange(2))
    precision, recall, f1, _ = _sklearn().precision_recall_fscore_support(
        truth, called, sample_weight=confusion.ravel(), average="binary", pos_label=1,
        zero_division=0)
    return {"auc": auc, "accuracy": _ratio(tn + tp, confusion.sum()),
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp)}


def _multiclass(confusion: np.ndarray, auc: float) -> Metrics:
    # Macro averages run over the classes that occur (in labels or predictions): a small site split
    # missing a grade must not score that grade as 0.
    present = _present(confusion)
    cm = confusion[np.ix_(present, present)]
    truth, pred = _pairs(present)
    precision, recall, f1, _ = _sklearn().precision_recall_fscore_support(
        truth, pred, labels=present, sample_weight=cm.ravel(), average="macro", zero_division=0)
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = cm.sum() - cm.sum(axis=0) - cm.sum(axis=1) + np.diag(cm)
    return {"auc": auc, "accuracy": _ratio(np.trace(cm), cm.sum()), "precision": float(precision),
            "recall": float(recall), "f1": float(f1), "sensitivity": float(recall),
            "specificity": float(np.mean(tn / np.maximum(tn + fp, 1)))}


def _kappa(confusion: np.ndarray) -> float:
    """Quadratic kappa over the classes that occur (scikit-learn's weights run over those)."""
    present = _present(confusion)
    truth, pred = _pairs(present)
    weights = confusion[np.ix_(present, present)].ravel()
    return float(_sklearn().cohen_kappa_score(truth, pred, labels=present, weights="quadratic",
                                   sample_weight=weights))


def _present(confusion: np.ndarray) -> np.ndarray:
    return np.flatnonzero(confusion.sum(axis=0) + confusion.sum(axis=1))


def _pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (true, predicted) pair of labels, row-major as confusion.ravel(): with the counts as
    sample weights, scikit-learn computes its metrics from a confusion matrix."""
    return np.repeat(labels, len(labels)), np.tile(labels, len(labels))


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(_sklearn().roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def _sklearn() -> ModuleType:
    """scikit-learn's metrics, imported on first use: a run or a site process starts without it."""
    import sklearn.metrics

    return sklearn.metrics
