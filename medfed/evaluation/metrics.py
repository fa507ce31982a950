"""Clinical metrics with scikit-learn, one function for every task type.

Keys: auc, accuracy, precision, recall, f1, sensitivity, specificity, n (and kappa for ordinal).
- binary: the positive class is the last one; sensitivity = recall of it, specificity = recall of
  the negative class; threshold 0.5 on its probability.
- multi-class / ordinal: AUC is macro one-vs-rest; the others are macro averages over classes
  (sensitivity = macro recall, specificity = macro true-negative rate); ordinal adds quadratic kappa.
- multi-label: each finding is a binary problem at threshold 0.5; every metric is the macro mean
  over findings (accuracy too, as MedMNIST reports it).
A metric that is undefined on the given labels (AUC when only one class is present) is NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medfed.types import Metrics, Task

METRIC_KEYS = ("auc", "accuracy", "precision", "recall", "f1", "sensitivity", "specificity")


def compute_metrics(task: Task, y_true: np.ndarray, probs: np.ndarray) -> Metrics:
    """probs: (N, C) class probabilities (softmax), or (N, L) per-finding probabilities (sigmoid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics become NaN / 0 by design, see above
        if task is Task.MULTILABEL:
            out = _multilabel(y_true.astype(int), probs)
        elif task is Task.BINARY:
            out = _binary(y_true.astype(int), probs[:, -1])
        else:
            out = _multiclass(y_true.astype(int), probs)
            if task is Task.ORDINAL:
                out["kappa"] = float(cohen_kappa_score(y_true, probs.argmax(1), weights="quadratic"))
    out["n"] = float(len(y_true))
    return out


def _binary(y: np.ndarray, score: np.ndarray) -> Metrics:
    pred = (score >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, average="binary", pos_label=1, zero_division=0)
    return {"auc": _auc(y, score), "accuracy": float(accuracy_score(y, pred)),
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp)}


def _multiclass(y: np.ndarray, probs: np.ndarray) -> Metrics:
    pred = probs.argmax(1)
    # Macro averages run over the classes that occur (in labels or predictions): a small site split
    # missing a grade must not score that grade as 0.
    present = np.union1d(y, pred)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, labels=present, average="macro", zero_division=0)
    cm = confusion_matrix(y, pred, labels=present)
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = cm.sum() - cm.sum(axis=0) - cm.sum(axis=1) + np.diag(cm)
    # Macro one-vs-rest AUC (as sklearn's multi_class="ovr"), over the classes it is defined for.
    auc = np.nanmean([_auc((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1])])
    return {"auc": float(auc), "accuracy": float(accuracy_score(y, pred)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1), "sensitivity": float(recall),
            "specificity": float(np.mean(tn / np.maximum(tn + fp, 1)))}


def _multilabel(y: np.ndarray, probs: np.ndarray) -> Metrics:
    per_finding = [_binary(y[:, j], probs[:, j]) for j in range(y.shape[1])]
    return {k: float(np.nanmean([m[k] for m in per_finding])) for k in METRIC_KEYS}


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")
