"""Federated evaluation from aggregates: each site sends counts, never a per-image score or label.

A site scores the final model on its own test (or validation) split and sends a `ScoreSummary`:
its sample count, its summed loss, a confusion matrix at the task's decision rule, and for each
output one histogram of that output's score over the samples whose label is that output
("positives") and one over the rest ("negatives"). The server validates what an untrusted site
sent (`parse_summary`), sums the summaries (`combine`) and reads the pooled metrics off the sum
with the definitions of metrics.compute_metrics (`summary_metrics`, via
metrics.metrics_from_confusion), DeLong's interval of the AUC (`auc_interval`), and a binary
operating point chosen on the pooled validation summaries (`choose_threshold`, `rates_at`).

Bins. A probability p falls in bin b when EDGES[b] <= p < EDGES[b + 1]. The interior edges are
uniform in logit space, sigmoid(k * 0.02) for k = -800 .. 800 (logits -16 .. 16), with one open
bin below and one above: 1602 bins. Logit bins are narrow where a trained model's scores pile up
(near 0 and 1) and 0.5 = sigmoid(0) is an edge, so "score >= 0.5" is a union of whole bins. A
site compares its scores with the edges in their own precision (float32 scores against float32
edges), as numpy does when a float32 score array meets a Python float threshold: "score >=
threshold" on the raw scores then calls the same samples positive as the bins do.

What is exact and what is approximate.
- Exact: n, the mean loss, and every threshold metric (accuracy, precision, recall, f1,
  sensitivity, specificity, kappa): they come from the confusion counts, summed over sites.
  Rates at a bin edge (`rates_at`) are exact as well.
- Approximate: the AUC, and the operating point. Within a bin all scores count as tied, so a
  positive/negative pair in the same bin counts 1/2 whatever its true order: the binned AUC differs
  from the AUC of the raw pooled scores by at most half the share of positive/negative pairs that
  share a bin, sum_b P_b Q_b / (2 m n), which `auc_tie_bound` reads off the summary. In practice
  the error is far below that bound (within a 0.02-logit bin the two classes come first about
  equally often): on PneumoniaMNIST test predictions of FedAvg models after 2 to 10 rounds (624
  images, AUC 0.92-0.94) it was at most 8.5e-4 (bound 9.4e-3), for an undertrained model whose
  scores all lay within 0.4 logit (0.05-logit bins missed that one by 4.2e-3); on simulated
  scores, weak (AUC 0.76) to saturated (0.9999), under 1e-4. The AUC is exact when no positive
  shares a bin with a negative of a different score. Scores below sigmoid(-16) ~ 1.1e-7 or above
  sigmoid(16) share the end bins.
- DeLong's variance (DeLong et al. 1988) is computed on the binned scores: the placement of a
  positive in bin b is (negatives below b + half the negatives in b) / n, and symmetrically for a
  negative; it equals statistics.delong_ci on the binned scores.
- Multi-class and multi-label: the macro AUC's interval uses the mean of the per-output standard
  errors, which bounds the standard error of the mean whatever the outputs' correlation
  (Minkowski's inequality): a conservative interval, not DeLong's exact one.
- Operating points are bin edges. The sensitivity rule gives exactly the lower edge of the bin
  holding statistics.threshold_for_sensitivity's threshold on the raw scores. Youden's rule gives
  that of statistics.youden_threshold when no bin mixes the classes; otherwise its J on the raw
  scores is within one bin's share of cases (P_b / m + Q_b / n) of the raw optimum.

Message size: two rows of 1602 counts per output (one row for a binary task: the positive class's
score) plus the confusion counts: as compact JSON about 6.5 KB per output for a few hundred
images, 8 KB for 100,000 (more digits), never more values whatever N is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medfed.errors import IncompatibleUpdate
from medfed.evaluation.metrics import METRIC_KEYS, binary_confusion, metrics_from_confusion
from medfed.evaluation.statistics import Interval, normal_interval
from medfed.types import Metrics, Task

LOGIT_STEP = 0.02
LOGIT_LIMIT = 16.0
_STEPS = round(LOGIT_LIMIT / LOGIT_STEP)
# (1601,) interior edges; index _STEPS is sigmoid(0) = 0.5 exactly (0 * step is exactly 0).
INTERIOR_EDGES = 1.0 / (1.0 + np.exp(-np.arange(-_STEPS, _STEPS + 1) * LOGIT_STEP))
EDGES = np.concatenate([[0.0], INTERIOR_EDGES])  # (BINS,) the lower edge of each bin
BINS = len(EDGES)
HALF_BIN = _STEPS + 1  # the first bin at or above 0.5
BINNING = f"logit:{-LOGIT_LIMIT:g}:{LOGIT_LIMIT:g}:{LOGIT_STEP:g}"  # names the edges on the wire
MAX_COUNT = 10**9  # no site holds more samples; larger counts are malformed or hostile
RULES = ("youden", "sensitivity")
_KEYS = ("binning", "task", "n", "loss_sum", "positives", "negatives", "confusion")


@dataclass(frozen=True, eq=False)
class ScoreSummary:
    """What a site sends about one split: counts only, no per-image value.

    positives / negatives: (rows, BINS) histograms of each output's score among the samples whose
    label is that output / is not. rows is 1 for a binary task (the positive class, the last
    column of probs, as compute_metrics scores it), else the number of outputs.
    confusion: binary (2, 2) of (true, score >= 0.5); multi-class / ordinal (C, C) of (true,
    argmax); multi-label (L, 2, 2) of (true, score >= 0.5) per finding."""

    task: Task
    n: int
    loss_sum: float  # sum of per-sample losses: mean loss = loss_sum / n
    positives: np.ndarray
    negatives: np.ndarray
    confusion: np.ndarray

    def __post_init__(self) -> None:
        for name in ("positives", "negatives", "confusion"):  # frozen means the counts too
            counts = np.array(getattr(self, name), dtype=np.int64)
            counts.flags.writeable = False
            object.__setattr__(self, name, counts)

    def to_json(self) -> dict:
        """A plain JSON-able dict of ints and one float; its size does not depend on n."""
        return {"binning": BINNING, "task": str(self.task), "n": int(self.n),
                "loss_sum": float(self.loss_sum), "positives": self.positives.tolist(),
                "negatives": self.negatives.tolist(), "confusion": self.confusion.tolist()}


def summarize(task: Task, y: np.ndarray, probs: np.ndarray, loss: float) -> ScoreSummary:
    """At a site: y and probs as compute_metrics takes them, loss the split's mean loss."""
    probs = np.asarray(probs)
    y = np.asarray(y).astype(int)
    y = y if task is Task.MULTILABEL else y.reshape(-1)
    _check_site_inputs(task, y, probs, loss)
    if task is Task.BINARY:
        truth, scores = y[:, None] == 1, probs[:, -1:]
        confusion = binary_confusion(y, probs[:, -1])
    elif task is Task.MULTILABEL:
        truth, scores = y == 1, probs
        confusion = np.stack([binary_confusion(y[:, j], probs[:, j]) for j in range(y.shape[1])])
    else:
        c = probs.shape[1]
        truth, scores = y[:, None] == np.arange(c), probs
        confusion = np.bincount(y * c + probs.argmax(1), minlength=c * c).reshape(c, c)
    bins = bin_index(scores)  # (N, rows)
    positives = np.stack([np.bincount(bins[truth[:, r], r], minlength=BINS) for r in range(bins.shape[1])])
    negatives = np.stack([np.bincount(bins[~truth[:, r], r], minlength=BINS) for r in range(bins.shape[1])])
    return ScoreSummary(task, len(y), float(loss) * len(y), positives, negatives, confusion)


def bin_index(scores: np.ndarray) -> np.ndarray:
    """The bin of each score, compared in the scores' own precision (float32 or float64)."""
    dtype = np.float32 if scores.dtype == np.float32 else np.float64
    return np.searchsorted(INTERIOR_EDGES.astype(dtype), scores.astype(dtype), side="right")


def _check_site_inputs(task: Task, y: np.ndarray, probs: np.ndarray, loss: float) -> None:
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs must be (N, outputs) with N = {len(y)} labels, got {probs.shape}")
    if not np.all(np.isfinite(probs)) or not math.isfinite(loss):
        raise ValueError("probs and loss must be finite")
    if task is Task.MULTILABEL:
        valid = y.shape == probs.shape and np.isin(y, (0, 1)).all()
    else:
        valid = ((y >= 0) & (y < max(probs.shape[1], 2))).all()
        valid = valid and (task is not Task.BINARY or np.isin(y, (0, 1)).all())
    if not valid:
        raise ValueError(f"labels do not fit a {task} task with {probs.shape[1]} outputs")


# --- at the server: an untrusted site's JSON -> a ScoreSummary ---------------------------------

def parse_summary(raw: object, task: Task, n_outputs: int) -> ScoreSummary:
    """Validate a site's JSON against the task and the model's outputs (binary: 1 or 2); every
    problem raises IncompatibleUpdate with one line saying what was wrong."""
    if not isinstance(raw, dict):
        raise _bad(f"a score summary is a JSON object, got {type(raw).__name__}")
    if set(raw) != set(_KEYS):
        missing, extra = sorted(set(_KEYS) - set(raw), key=str), sorted(set(raw) - set(_KEYS), key=str)
        raise _bad(f"a score summary has the keys {', '.join(_KEYS)}; missing {missing}, "
                   f"unexpected {extra}")
    if raw["binning"] != BINNING:
        raise _bad(f"binning is {raw['binning']!r}, this server reads {BINNING!r}; "
                   "the site runs a different medfed version")
    if raw["task"] != str(task):
        raise _bad(f"task is {raw['task']!r}, the federation's is {str(task)!r}")
    rows = _rows(task, n_outputs)
    summary = ScoreSummary(
        task, _count(raw["n"], "n"), _loss_sum(raw["loss_sum"]),
        _counts(raw["positives"], "positives", (rows, BINS)),
        _counts(raw["negatives"], "negatives", (rows, BINS)),
        _counts(raw["confusion"], "confusion", _confusion_shape(task, n_outputs)))
    _check_consistent(summary)
    return summary


def _rows(task: Task, n_outputs: int) -> int:
    low = 1 if task in (Task.BINARY, Task.MULTILABEL) else 2
    if isinstance(n_outputs, bool) or not isinstance(n_outputs, int) or n_outputs < low:
        raise ValueError(f"n_outputs must be an int >= {low} for a {task} task, got {n_outputs!r}")
    if task is Task.BINARY and n_outputs > 2:
        raise ValueError(f"a binary model has 1 or 2 outputs, got {n_outputs}")
    return 1 if task is Task.BINARY else n_outputs


def _confusion_shape(task: Task, n_outputs: int) -> tuple[int, ...]:
    if task is Task.BINARY:
        return (2, 2)
    return (n_outputs, 2, 2) if task is Task.MULTILABEL else (n_outputs, n_outputs)


def _bad(message: str) -> IncompatibleUpdate:
    return IncompatibleUpdate(f"score summary: {message}")


def _count(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:  # type(): a bool is no count
        raise _bad(f"{name} must be an integer in [0, {MAX_COUNT}], got {_show(value)}")
    return value


def _loss_sum(value: object) -> float:
    number = float(value) if type(value) in (int, float) and abs(value) < 1e300 else math.nan
    if not math.isfinite(number) or number < 0:
        raise _bad(f"loss_sum must be a finite number >= 0, got {_show(value)}")
    return number


def _counts(value: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    flat = _flatten(value, name, shape)
    if not all(type(v) is int and 0 <= v <= MAX_COUNT for v in flat):
        wrong = next(v for v in flat if not (type(v) is int and 0 <= v <= MAX_COUNT))
        raise _bad(f"{name} holds {_show(wrong)}; counts are integers in [0, {MAX_COUNT}]")
    return np.array(flat, dtype=np.int64).reshape(shape)


def _flatten(value: object, name: str, shape: tuple[int, ...]) -> list:
    """Nested JSON lists of the given shape -> their leaves, row-major."""
    if not isinstance(value, list) or len(value) != shape[0]:
        got = f"{len(value)} entries" if isinstance(value, list) else type(value).__name__
        raise _bad(f"{name} must be a list of {shape[0]} (overall shape {shape}), got {got}")
    if len(shape) == 1:
        return value
    return [leaf for k, row in enumerate(value) for leaf in _flatten(row, f"{name}[{k}]", shape[1:])]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_consistent(s: ScoreSummary) -> None:
    """Every histogram row and confusion matrix counts the same n samples, the positives agree
    with the confusion's true labels, and (at 0.5) with its calls."""
    totals = s.positives.sum(1) + s.negatives.sum(1)
    if np.any(totals != s.n):
        raise _bad(f"the histograms count {sorted(set(totals.tolist()))} samples, n is {s.n}")
    per_matrix = s.confusion.sum((1, 2)) if s.task is Task.MULTILABEL else s.confusion.sum()[None]
    if np.any(per_matrix != s.n):
        raise _bad(f"the confusion counts {sorted(set(per_matrix.tolist()))} samples, n is {s.n}")
    if s.task is Task.MULTILABEL or s.task is Task.BINARY:
        cm = s.confusion.reshape(-1, 2, 2)  # (rows, true, called)
        truth, called_pos = cm[:, 1].sum(1), s.positives[:, HALF_BIN:].sum(1)
        consistent = np.array_equal(called_pos, cm[:, 1, 1]) and np.array_equal(
            s.negatives[:, HALF_BIN:].sum(1), cm[:, 0, 1])
    else:
        truth, consistent = s.confusion.sum(1), True
    if not consistent or not np.array_equal(s.positives.sum(1), truth):
        raise _bad("the histograms and the confusion counts disagree")


# --- pooling and reading metrics --------------------------------------------------------------

def combine(summaries: list[ScoreSummary]) -> ScoreSummary:
    """The pooled summary: counts and losses summed (fsum: the same float in any order)."""
    if not summaries:
        raise ValueError("combine needs at least one summary")
    first = summaries[0]
    for s in summaries[1:]:
        if s.task is not first.task or s.positives.shape != first.positives.shape or (
                s.confusion.shape != first.confusion.shape):
            raise IncompatibleUpdate(f"score summary of a {s.task} task with {s.positives.shape[0]} "
                                     f"outputs cannot join {first.task} with {first.positives.shape[0]}")
    return ScoreSummary(first.task, sum(s.n for s in summaries),
                        math.fsum(s.loss_sum for s in summaries),
                        sum(s.positives for s in summaries), sum(s.negatives for s in summaries),
                        sum(s.confusion for s in summaries))


def summary_metrics(s: ScoreSummary) -> Metrics:
    """compute_metrics' keys and definitions, plus "loss" (the mean loss); all NaN when n is 0."""
    if s.n == 0:
        keys = METRIC_KEYS + (("kappa",) if s.task is Task.ORDINAL else ())
        return {**{k: math.nan for k in keys}, "n": 0.0, "loss": math.nan}
    aucs = np.array([_binned_delong(p, q)[0] for p, q in zip(s.positives, s.negatives, strict=True)])
    out = metrics_from_confusion(s.task, s.confusion, aucs)
    return {**out, "n": float(s.n), "loss": s.loss_sum / s.n}


def _binned_delong(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(AUC, DeLong's variance) of one output from its (BINS,) histograms; ties count 1/2.

    Every positive in bin b has the same placement V10 (the share of negatives it outranks), every
    negative the same V01; the variance is DeLong's S10 / m + S01 / n over those placements."""
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)
    m, n = pos.sum(), neg.sum()
    if m == 0 or n == 0:
        return math.nan, math.nan
    v10 = (np.cumsum(neg) - neg / 2) / n  # negatives below the bin, half of those in it
    v01 = (np.cumsum(pos[::-1])[::-1] - pos / 2) / m  # positives above, half of those in it
    auc = float((pos * v10).sum() / m)
    if m < 2 or n < 2:  # a variance needs two cases of each class
        return auc, math.nan
    s10 = (pos * (v10 - auc) ** 2).sum() / (m - 1)
    s01 = (neg * (v01 - auc) ** 2).sum() / (n - 1)
    return auc, float(s10 / m + s01 / n)


def auc_interval(s: ScoreSummary, level: float = 0.95) -> Interval:
    """The pooled AUC with DeLong's normal interval (clipped to [0, 1]) on the binned scores.

    Binary: DeLong's interval. Multi-class / multi-label: the macro AUC (as summary_metrics) with
    the mean of the defined outputs' standard errors, a conservative bound (module docstring).
    NaN bounds when the variance is undefined (fewer than two cases of a class)."""
    pairs = [_binned_delong(p, q) for p, q in zip(s.positives, s.negatives, strict=True)]
    defined = [(a, v) for a, v in pairs if not math.isnan(a)]
    if not defined:
        return Interval(math.nan, math.nan, math.nan)
    estimate = float(np.mean([a for a, _ in defined]))
    se = float(np.mean([v ** 0.5 for _, v in defined]))
    if math.isnan(se):
        return Interval(estimate, math.nan, math.nan)
    return normal_interval(estimate, se ** 2, level)


def auc_tie_bound(s: ScoreSummary) -> float:
    """How far the binned AUC can be from the raw scores' AUC: half the share of positive/negative
    pairs in the same bin (the mean over outputs for a macro AUC); NaN where the AUC is."""
    bounds = []
    for pos, neg in zip(s.positives.astype(np.float64), s.negatives.astype(np.float64), strict=True):
        if pos.sum() and neg.sum():
            bounds.append(float((pos * neg).sum() / (2 * pos.sum() * neg.sum())))
    return float(np.mean(bounds)) if bounds else math.nan


# --- binary operating points ------------------------------------------------------------------

def choose_threshold(val: ScoreSummary, rule: str = "youden",
                     target_sensitivity: float | None = None) -> float:
    """A bin edge chosen on (pooled) validation summaries by statistics' rules: "youden", the
    lowest threshold maximizing sensitivity + specificity - 1; "sensitivity", the highest reaching
    target_sensitivity. Candidates are the lower edges of the occupied bins, as roc_curve's are
    the scores that occur."""
    tpr, fpr, occupied = _called_rates(val)
    if rule == "youden":
        if target_sensitivity is not None:
            raise ValueError("target_sensitivity applies to rule='sensitivity' only")
        j = np.where(occupied, tpr - fpr, -np.inf)
        k = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    elif rule == "sensitivity":
        if target_sensitivity is None or not 0 < target_sensitivity <= 1:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
        k = int(np.flatnonzero(occupied & (tpr >= target_sensitivity))[-1])
    else:
        raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    return float(EDGES[k])


def _called_rates(s: ScoreSummary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(BINS,) sensitivity and false-positive rate when score >= EDGES[k] is called positive, and
    which bins hold a score."""
    pos, neg = _binary_rows(s)
    m, n = pos.sum(), neg.sum()
    if m == 0 or n == 0:
        raise ValueError("choosing a threshold needs positive and negative validation cases")
    tpr = np.cumsum(pos[::-1])[::-1] / m
    fpr = np.cumsum(neg[::-1])[::-1] / n
    return tpr, fpr, (pos + neg) > 0


def rates_at(s: ScoreSummary, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when score >= threshold is called positive; threshold must be a
    bin edge (choose_threshold's answer, or 0.5), where the counts give them exactly."""
    pos, neg = _binary_rows(s)
    at = np.flatnonzero(EDGES == threshold)
    if len(at) == 0:
        raise ValueError(f"threshold {threshold} is not a bin edge; use choose_threshold's answer "
                         "or 0.5")
    k = int(at[0])
    m, n = pos.sum(), neg.sum()
    sensitivity = float(pos[k:].sum() / m) if m else math.nan
    specificity = float(neg[:k].sum() / n) if n else math.nan
    return sensitivity, specificity


def _binary_rows(s: ScoreSummary) -> tuple[np.ndarray, np.ndarray]:
    if s.task is not Task.BINARY:
        raise ValueError(f"operating points are for binary tasks, not {s.task}")
    return s.positives[0], s.negatives[0]
