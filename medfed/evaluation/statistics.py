"""Clinical statistics for binary scores: how sure we are, and whether one model beats another.

- Bootstrap confidence intervals (percentile method, Efron & Tibshirani 1993, ch. 13): resample
  the test cases with replacement; resamples with one class only are redrawn, since AUC is
  undefined on them.
- DeLong's test (DeLong, DeLong & Clarke-Pearson, Biometrics 1988) for two correlated AUCs on the
  same cases, with the structural components computed by ranking (Sun & Xu, IEEE SPL 2014).
- A paired bootstrap of the difference of any metric on the same cases, and a paired t-test of
  per-seed results (scipy's ttest_rel).
- Calibration: reliability curve and expected calibration error over equal-width bins (Naeini et
  al., AAAI 2015).
- Operating points chosen on validation data: Youden's J (Youden 1950) or the highest threshold
  that reaches a target sensitivity; test sensitivity and specificity are then read at it.

Randomness is passed in as a numpy Generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_curve

Metric = Callable[[np.ndarray, np.ndarray], float]  # (labels 0/1, scores) -> value


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedTest:
    difference: float  # a - b
    low: float
    high: float
    p_value: float  # two-sided


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count one half): scikit-learn's value, about ten
    times faster, which matters inside a bootstrap of thousands of resamples."""
    return float(auc_rows(y[None], score[None])[0])


def auc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """auc() of each row of (k, n) labels and scores, ranked in one call (NaN for a row of one
    class): a bootstrap's resamples at once."""
    positives = y == 1
    m, n = positives.sum(1), (~positives).sum(1)
    ranks = stats.rankdata(score, method="average", axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positives).sum(1) - m * (m + 1) / 2) / (m * n)


def _resampled(metric: Metric, y: np.ndarray, score: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """metric on each resample (rows: their case indices), row-wise where the metric has a form
    for it."""
    if metric is auc:
        return auc_rows(y[rows], score[rows])
    return np.array([metric(y[i], score[i]) for i in rows])


def bootstrap_indices(y: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) resampled case indices, each resample holding both classes."""
    n = len(y)
    if len(np.unique(y)) < 2:
        raise ValueError("bootstrapping a metric of two classes needs both classes in the cases")
    out = rng.integers(0, n, size=(n_boot, n))
    for row in range(n_boot):
        while len(np.unique(y[out[row]])) < 2:
            out[row] = rng.integers(0, n, size=n)
    return out


def bootstrap_ci(y: np.ndarray, score: np.ndarray, metric: Metric, rng: np.random.Generator,
                 n_boot: int = 2000, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of metric(y, score)."""
    values = _resampled(metric, y, score, bootstrap_indices(y, n_boot, rng))
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(metric(y, score), float(low), float(high))


def paired_bootstrap(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, metric: Metric,
                     rng: np.random.Generator, n_boot: int = 2000, level: float = 0.95
                     ) -> PairedTest:
    """metric(a) - metric(b) on the same resampled cases; p: twice the smaller share of resampled
    differences on either side of zero (the percentile test)."""
    rows = bootstrap_indices(y, n_boot, rng)
    diffs = _resampled(metric, y, score_a, rows) - _resampled(metric, y, score_b, rows)
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return PairedTest(metric(y, score_a) - metric(y, score_b), float(low), float(high), float(p))


def _midranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For k score vectors (k, n): AUCs (k,), and the structural components V10 (k, m) over the
    m positives and V01 (k, n - m) over the negatives (Sun & Xu's ranking form)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs positive and negative cases")
    v10, v01, aucs = [], [], []
    for k in range(scores.shape[0]):
        all_ranks = _midranks(np.concatenate([pos[k], neg[k]]))
        pos_in_all, neg_in_all = all_ranks[:m], all_ranks[m:]
        pos_own, neg_own = _midranks(pos[k]), _midranks(neg[k])
        aucs.append((pos_in_all.sum() - m * (m + 1) / 2) / (m * n))
        v10.append((pos_in_all - pos_own) / n)  # share of negatives each positive outranks
        v01.append(1 - (neg_in_all - neg_own) / m)  # share of positives outranking each negative
    return np.array(aucs), np.array(v10), np.array(v01)


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), their covariance (k, k)) by DeLong's method."""
    aucs, v10, v01 = delong_components(y, scores)
    if v10.shape[1] < 2 or v01.shape[1] < 2:  # a variance needs two cases of each class
        return aucs, np.full((len(aucs), len(aucs)), np.nan)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / v10.shape[1] + s01 / v01.shape[1]


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95
                ) -> PairedTest:
    """Two AUCs on the same cases: the difference, its normal interval, and the two-sided p."""
    aucs, cov = delong_covariance(y, np.vstack([score_a, score_b]))
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if np.isnan(variance):
        raise ValueError("DeLong's test needs at least two positive and two negative cases")
    if variance <= 0:  # identical rankings: no evidence of a difference
        return PairedTest(difference, difference, difference, 1.0)
    se = variance ** 0.5
    z = stats.norm.ppf((1 + level) / 2)
    p = 2 * stats.norm.sf(abs(difference) / se)
    return PairedTest(difference, difference - z * se, difference + z * se, float(p))


def delong_ci(y: np.ndarray, score: np.ndarray, level: float = 0.95) -> Interval:
    """AUC with DeLong's normal interval, clipped to [0, 1]."""
    aucs, cov = delong_covariance(y, score[None, :])
    return normal_interval(float(aucs[0]), float(cov[0, 0]), level)


def normal_interval(estimate: float, variance: float, level: float = 0.95) -> Interval:
    """estimate +- z * sqrt(variance), clipped to [0, 1] (the range of an AUC or a rate)."""
    half = stats.norm.ppf((1 + level) / 2) * variance ** 0.5
    return Interval(estimate, float(max(0.0, estimate - half)), float(min(1.0, estimate + half)))


def paired_t_test(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> PairedTest:
    """Per-seed results of two configurations (same seeds): mean difference, its t interval, p."""
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diffs) < 2:
        raise ValueError("a paired t-test needs at least two seeds")
    mean, se = float(diffs.mean()), float(stats.sem(diffs))
    if se == 0:
        return PairedTest(mean, mean, mean, 1.0 if mean == 0 else 0.0)
    half = stats.t.ppf((1 + level) / 2, len(diffs) - 1) * se
    return PairedTest(mean, mean - half, mean + half, float(stats.ttest_rel(a, b).pvalue))


@dataclass(frozen=True)
class Reliability:
    bin_edges: np.ndarray  # (bins + 1,)
    mean_predicted: np.ndarray  # (bins,), NaN for an empty bin
    observed_rate: np.ndarray  # (bins,), NaN for an empty bin
    counts: np.ndarray  # (bins,)
    ece: float  # sum_b (n_b / n) |observed_b - predicted_b|


def reliability(y: np.ndarray, score: np.ndarray, bins: int = 10) -> Reliability:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, weights=score, minlength=bins) / counts
        observed = np.bincount(which, weights=y.astype(np.float64), minlength=bins) / counts
    gaps = np.where(counts > 0, np.abs(observed - predicted), 0.0)
    return Reliability(edges, predicted, observed, counts, float((counts * gaps).sum() / len(y)))


def youden_threshold(y_val: np.ndarray, score_val: np.ndarray) -> float:
    """The threshold maximizing sensitivity + specificity - 1 on validation cases; of tied
    thresholds, the lowest (the most sensitive: missing disease usually costs more)."""
    fpr, tpr, thresholds = roc_curve(y_val, score_val, drop_intermediate=False)
    j = tpr - fpr
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[-1])
    return float(min(thresholds[best], 1.0))  # roc_curve's first threshold is +inf


def threshold_for_sensitivity(y_val: np.ndarray, score_val: np.ndarray, target: float) -> float:
    """The highest threshold whose validation sensitivity reaches `target` (the fewest false
    positives at that sensitivity)."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    _, tpr, thresholds = roc_curve(y_val, score_val, drop_intermediate=False)
    reaching = np.flatnonzero(tpr >= target)
    return float(min(thresholds[reaching[0]], 1.0))


def rates_at(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when score >= threshold is called positive."""
    called = score >= threshold
    positives, negatives = y == 1, y == 0
    sensitivity = float(called[positives].mean()) if positives.any() else float("nan")
    specificity = float((~called[negatives]).mean()) if negatives.any() else float("nan")
    return sensitivity, specificity


BOOTSTRAP_METRICS = ("auc", "accuracy", "precision", "recall", "f1", "sensitivity", "specificity")


def bootstrap_binary_metrics(y: np.ndarray, score: np.ndarray, rng: np.random.Generator,
                             n_boot: int = 1000, threshold: float = 0.5, level: float = 0.95
                             ) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of every binary metric at once (the same resamples for all):
    the threshold metrics are computed from vectorized confusion counts, AUC by ranks."""
    index = bootstrap_indices(y, n_boot, rng)  # (B, n)
    truth, called = y[index] == 1, score[index] >= threshold
    tp = (truth & called).sum(1)
    fp = (~truth & called).sum(1)
    fn = (truth & ~called).sum(1)
    tn = (~truth & ~called).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / (tp + fn)
        values = {
            "auc": auc_rows(y[index], score[index]),
            "accuracy": (tp + tn) / index.shape[1], "precision": precision, "recall": recall,
            "f1": np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0),
            "sensitivity": recall, "specificity": tn / (tn + fp),
        }
    q = [(1 - level) / 2, (1 + level) / 2]
    return {k: [float(x) for x in np.quantile(v, q)] for k, v in values.items()}
