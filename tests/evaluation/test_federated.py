"""Federated evaluation from aggregates against the raw pooled predictions (the reference).

Hand mutations that make a test here fail (tried): score bins by `>` instead of `>=` at an edge
(searchsorted side="left"); drop the 1/2 for ties within a bin; count a binary confusion by argmax
instead of score >= 0.5; skip the histogram/confusion consistency check in parse_summary; accept a
bool as a count; sum loss_sum with a plain float sum in combine (order-dependent).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.errors import IncompatibleUpdate
from medfed.evaluation import federated as fed
from medfed.evaluation import statistics as stats
from medfed.evaluation.metrics import compute_metrics
from medfed.types import Task

THRESHOLD_KEYS = ("accuracy", "precision", "recall", "f1", "sensitivity", "specificity")
OUTPUTS = {Task.BINARY: 2, Task.MULTICLASS: 4, Task.ORDINAL: 5, Task.MULTILABEL: 3}


def scored(task: Task, n: int, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, float32 probabilities) of a model: "random" (no skill), "realistic" (separated,
    often saturated logits) or "coarse" (probabilities rounded to 2 decimals: many raw ties)."""
    c = OUTPUTS[task]
    strength = {"random": 0.0, "realistic": 6.0, "coarse": 2.0}[kind]
    if task is Task.MULTILABEL:
        y = (rng.random((n, c)) < 0.3).astype(int)
        logits = rng.normal(0, 4, (n, c)) + strength * (2 * y - 1)
        probs = 1 / (1 + np.exp(-logits))
    else:
        y = rng.integers(0, c, n)
        logits = rng.normal(0, 4, (n, c))
        logits[np.arange(n), y] += 2 * strength
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
    probs = np.round(probs, 2) if kind == "coarse" else probs
    return y, probs.astype(np.float32)


def site_summaries(task: Task, y: np.ndarray, probs: np.ndarray, k: int, rng: np.random.Generator
                   ) -> list[fed.ScoreSummary]:
    """k sites of unequal sizes, each summarizing its own rows with a made-up mean loss."""
    cuts = np.sort(rng.choice(np.arange(1, len(y)), k - 1, replace=False))
    return [fed.summarize(task, y[rows], probs[rows], float(rng.random()))
            for rows in np.split(rng.permutation(len(y)), cuts)]


def binary_summary(y: np.ndarray, score: np.ndarray) -> fed.ScoreSummary:
    return fed.summarize(Task.BINARY, y, np.stack([1 - score, score], 1), 0.1)


# --- bins ------------------------------------------------------------------------------------

def test_bins_are_increasing_and_one_half_is_an_edge():
    assert fed.EDGES[fed.HALF_BIN] == 0.5 and fed.EDGES[0] == 0.0
    assert np.all(np.diff(fed.EDGES) > 0) and len(fed.EDGES) == fed.BINS
    # Near 1 a few float32 edges coincide (float32 cannot tell those probabilities apart): the
    # bins between them stay empty for float32 scores, and the order is kept.
    assert np.all(np.diff(fed.INTERIOR_EDGES.astype(np.float32)) >= 0)


@given(seed=st.integers(0, 10_000), dtype=st.sampled_from([np.float32, np.float64]))
def test_a_bin_index_at_or_above_k_means_score_at_or_above_edge_k(seed, dtype):
    # Scores on, just below and just above edges: the bins agree with numpy's `score >= edge`.
    rng = np.random.default_rng(seed)
    edges = fed.EDGES[rng.integers(1, fed.BINS, 50)].astype(dtype)
    scores = np.concatenate([edges, np.nextafter(edges, dtype(0)), np.nextafter(edges, dtype(1)),
                             rng.random(50).astype(dtype), np.array([0, 1], dtype)])
    bins = fed.bin_index(scores)
    for k in rng.integers(0, fed.BINS, 20):
        # A Python float, as thresholds are passed: numpy compares float32 scores in float32.
        np.testing.assert_array_equal(bins >= k, scores >= float(fed.EDGES[k]))


# --- pooled metrics against the raw pooled predictions ----------------------------------------

@given(seed=st.integers(0, 10_000), task=st.sampled_from(list(Task)),
       kind=st.sampled_from(["random", "realistic", "coarse"]), sites=st.integers(1, 6))
def test_pooled_summaries_give_the_raw_pooled_metrics(seed, task, kind, sites):
    rng = np.random.default_rng(seed)
    y, probs = scored(task, 3000, rng, kind)
    summaries = site_summaries(task, y, probs, sites, rng)
    got, want = fed.summary_metrics(fed.combine(summaries)), compute_metrics(task, y, probs)
    assert set(got) == set(want) | {"loss"}
    for key in THRESHOLD_KEYS + (("kappa", "n") if task is Task.ORDINAL else ("n",)):
        assert got[key] == want[key] or (math.isnan(got[key]) and math.isnan(want[key])), key
    assert abs(got["auc"] - want["auc"]) <= min(0.002, fed.auc_tie_bound(fed.combine(summaries)) + 1e-12)
    mean_loss = sum(s.loss_sum for s in summaries) / len(y)
    assert got["loss"] == pytest.approx(mean_loss, rel=1e-12)


@given(seed=st.integers(0, 10_000), n=st.integers(4, 300))
def test_auc_is_exact_when_no_positive_shares_a_bin_with_a_negative(seed, n):
    # Each occupied bin holds one class (several distinct scores, and raw ties, inside it).
    rng = np.random.default_rng(seed)
    bins = rng.choice(np.arange(1, fed.BINS - 1), size=min(n, 200), replace=False)
    label_of_bin = rng.integers(0, 2, len(bins))
    label_of_bin[:2] = [0, 1]
    pick = rng.integers(0, len(bins), n)
    pick[:2] = [0, 1]
    low, high = fed.EDGES[bins[pick]], fed.EDGES[bins[pick] + 1]
    score = np.round(low + (high - low) * rng.random(n) * 0.999, 17).clip(low, None)
    y = label_of_bin[pick]
    s = binary_summary(y, score)
    assert fed.auc_tie_bound(s) == 0.0
    assert fed.summary_metrics(s)["auc"] == pytest.approx(stats.auc(y, score), abs=1e-12)
    # ... and Youden's threshold is the lower edge of the bin holding the raw rule's threshold.
    if (y == 1).sum() and (y == 0).sum():
        raw = stats.youden_threshold(y, score)
        assert fed.choose_threshold(s) == fed.EDGES[fed.bin_index(np.array([raw]))[0]]


def test_summary_metrics_of_an_empty_split_are_nan():
    s = fed.summarize(Task.ORDINAL, np.zeros(0, int), np.zeros((0, 5)), 0.0)
    m = fed.summary_metrics(s)
    assert m["n"] == 0 and "kappa" in m and all(math.isnan(v) for k, v in m.items() if k != "n")


# --- DeLong's interval ------------------------------------------------------------------------

@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["random", "realistic", "coarse"]))
def test_binary_interval_is_delong_on_the_binned_scores_and_close_to_it_on_raw(seed, kind):
    rng = np.random.default_rng(seed)
    y, probs = scored(Task.BINARY, 2000, rng, kind)
    got = fed.auc_interval(fed.combine(site_summaries(Task.BINARY, y, probs, 5, rng)))
    binned = stats.delong_ci(y, fed.bin_index(probs[:, 1]).astype(np.float64))
    raw = stats.delong_ci(y, probs[:, 1])
    assert (got.estimate, got.low, got.high) == pytest.approx(
        (binned.estimate, binned.low, binned.high), abs=1e-9)
    assert got.low <= got.estimate <= got.high
    assert (got.low, got.high) == pytest.approx((raw.low, raw.high), abs=0.002)


@pytest.mark.parametrize("task", [Task.MULTICLASS, Task.ORDINAL, Task.MULTILABEL])
def test_macro_interval_holds_the_macro_auc_and_is_no_narrower_than_its_widest_output(task):
    rng = np.random.default_rng(3)
    y, probs = scored(task, 1500, rng, "coarse")
    s = fed.combine(site_summaries(task, y, probs, 3, rng))
    interval = fed.auc_interval(s)
    assert interval.estimate == pytest.approx(fed.summary_metrics(s)["auc"])
    assert interval.low < interval.estimate < interval.high
    # The mean of the standard errors is at least the smallest one: wider than the best output's.
    narrowest = min(fed.auc_interval(_one_output(s, r)).high - fed.auc_interval(_one_output(s, r)).low
                    for r in range(len(s.positives)))
    assert interval.high - interval.low >= narrowest - 1e-12


def _one_output(s: fed.ScoreSummary, row: int) -> fed.ScoreSummary:
    return fed.ScoreSummary(Task.MULTILABEL, s.n, s.loss_sum, s.positives[row:row + 1],
                            s.negatives[row:row + 1], np.zeros((1, 2, 2), int))


def test_interval_of_an_undefined_auc_is_nan():
    s = binary_summary(np.ones(5, int), np.linspace(0.1, 0.9, 5))
    assert all(math.isnan(v) for v in vars(fed.auc_interval(s)).values())


# --- combine ---------------------------------------------------------------------------------

@given(seed=st.integers(0, 10_000), task=st.sampled_from(list(Task)))
def test_combine_is_permutation_invariant_and_one_summary_is_itself(seed, task):
    rng = np.random.default_rng(seed)
    y, probs = scored(task, 400, rng, "realistic")
    summaries = site_summaries(task, y, probs, 5, rng)
    pooled = fed.combine(summaries).to_json()
    assert fed.combine([summaries[i] for i in rng.permutation(5)]).to_json() == pooled
    assert fed.combine(summaries[:1]).to_json() == summaries[0].to_json()


def test_combine_refuses_summaries_of_different_tasks_and_an_empty_list():
    rng = np.random.default_rng(0)
    a = fed.summarize(Task.BINARY, *scored(Task.BINARY, 20, rng, "random"), 0.1)
    b = fed.summarize(Task.MULTICLASS, *scored(Task.MULTICLASS, 20, rng, "random"), 0.1)
    with pytest.raises(IncompatibleUpdate):
        fed.combine([a, b])
    with pytest.raises(ValueError):
        fed.combine([])


# --- operating points ------------------------------------------------------------------------

@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["random", "realistic", "coarse"]),
       target=st.floats(0.05, 1.0))
def test_thresholds_follow_the_raw_rules_up_to_one_bin(seed, kind, target):
    rng = np.random.default_rng(seed)
    y, probs = scored(Task.BINARY, 800, rng, kind)
    score = probs[:, 1]
    val = fed.combine(site_summaries(Task.BINARY, y, probs, 4, rng))
    # Sensitivity rule: exactly the lower edge of the bin holding the raw threshold.
    edge = fed.choose_threshold(val, "sensitivity", target)
    raw = stats.threshold_for_sensitivity(y, score, target)
    assert edge == fed.EDGES[fed.bin_index(np.array([raw], np.float32))[0]]
    assert stats.rates_at(y, score, edge)[0] >= target
    # Youden: its J on the raw cases is within one bin's share of cases of the raw optimum.
    edge = fed.choose_threshold(val)
    best = sum(stats.rates_at(y, score, stats.youden_threshold(y, score))) - 1
    one_bin = np.max(val.positives[0] / (y == 1).sum() + val.negatives[0] / (y == 0).sum())
    assert sum(stats.rates_at(y, score, edge)) - 1 >= best - one_bin - 1e-12


@given(seed=st.integers(0, 10_000), dtype=st.sampled_from([np.float32, np.float64]))
def test_rates_at_an_edge_equal_the_raw_rates(seed, dtype):
    rng = np.random.default_rng(seed)
    y, probs = scored(Task.BINARY, 500, rng, "realistic")
    probs = probs.astype(dtype)
    s = fed.combine(site_summaries(Task.BINARY, y, probs, 3, rng))
    for threshold in [0.5, 0.0, fed.choose_threshold(s), *fed.EDGES[rng.integers(0, fed.BINS, 5)]]:
        assert fed.rates_at(s, float(threshold)) == pytest.approx(
            stats.rates_at(y, probs[:, 1], float(threshold)), nan_ok=True, abs=0)
    m = fed.summary_metrics(s)
    assert fed.rates_at(s, 0.5) == (m["sensitivity"], m["specificity"])


def test_operating_points_refuse_what_they_cannot_answer():
    rng = np.random.default_rng(0)
    s = fed.summarize(Task.BINARY, *scored(Task.BINARY, 50, rng, "realistic"), 0.1)
    for call in (lambda: fed.rates_at(s, 0.3), lambda: fed.choose_threshold(s, "best"),
                 lambda: fed.choose_threshold(s, "sensitivity"),
                 lambda: fed.choose_threshold(s, "youden", 0.9),
                 lambda: fed.choose_threshold(binary_summary(np.ones(4, int), np.full(4, 0.7))),
                 lambda: fed.choose_threshold(fed.summarize(
                     Task.MULTILABEL, *scored(Task.MULTILABEL, 50, rng, "random"), 0.1))):
        with pytest.raises(ValueError):
            call()


# --- the message: small, no per-sample value, round-trips ------------------------------------

@pytest.mark.parametrize("task", list(Task))
def test_the_message_is_small_and_its_size_does_not_grow_with_n(task):
    rng = np.random.default_rng(0)
    small = fed.summarize(task, *scored(task, 10, rng, "realistic"), 0.2).to_json()
    large = fed.summarize(task, *scored(task, 100_000, rng, "realistic"), 0.2).to_json()
    leaves = [_leaves(m) for m in (small, large)]
    assert len(leaves[0]) == len(leaves[1])  # the same number of values whatever n
    numbers = [v for v in leaves[1] if not isinstance(v, str)]  # binning and task are names
    assert [v for v in numbers if type(v) is not int] == [large["loss_sum"]]  # counts only
    outputs = 1 if task is Task.BINARY else OUTPUTS[task]
    assert len(json.dumps(large, separators=(",", ":"))) < 10_000 * outputs + 1000


def _leaves(value: object) -> list:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


@pytest.mark.parametrize("task", list(Task))
def test_to_json_and_parse_summary_round_trip(task):
    rng = np.random.default_rng(1)
    s = fed.summarize(task, *scored(task, 300, rng, "coarse"), 0.25)
    raw = json.loads(json.dumps(s.to_json()))
    assert fed.parse_summary(raw, task, OUTPUTS[task]).to_json() == s.to_json()


def test_a_summary_is_immutable():
    s = binary_summary(np.array([0, 1]), np.array([0.2, 0.8]))
    with pytest.raises(ValueError):
        s.positives[0, 0] = 5


# --- parse_summary: an untrusted site's JSON ----------------------------------------------------

def _valid() -> dict:
    y = np.array([0, 0, 1, 1, 1])
    return binary_summary(y, np.array([0.1, 0.6, 0.4, 0.7, 0.9])).to_json()


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _move_count(m: dict) -> None:  # one positive moves bins across 0.5: histograms disagree
    row = m["positives"][0]
    below = next(i for i, v in enumerate(row) if v and i < fed.HALF_BIN)
    row[below] -= 1
    row[fed.HALF_BIN + 5] += 1


MUTATIONS = {
    "missing key": lambda m: m.pop("confusion"),
    "extra key": _set("scores", [0.1, 0.9]),
    "other task": _set("task", "multi-class"),
    "other binning": _set("binning", "linear:0:1:0.01"),
    "n as text": _set("n", "5"),
    "n as float": _set("n", 5.0),
    "n as bool": _set("n", True),
    "negative n": _set("n", -5),
    "huge n": _set("n", 10**12),
    "enormous n": _set("n", 10**400),
    "n inconsistent": _set("n", 6),
    "NaN loss": _set("loss_sum", float("nan")),
    "infinite loss": _set("loss_sum", float("inf")),
    "loss as text": _set("loss_sum", "0.5"),
    "enormous loss": _set("loss_sum", 10**400),
    "negative loss": _set("loss_sum", -1.0),
    "histogram not a list": _set("positives", {"0": 1}),
    "extra output": lambda m: m["positives"].append([0] * fed.BINS),
    "short row": lambda m: m["negatives"][0].pop(),
    "float count": lambda m: m["positives"][0].__setitem__(3, 1.5),
    "bool count": lambda m: m["positives"][0].__setitem__(m["positives"][0].index(1), True),
    "None count": lambda m: m["positives"][0].__setitem__(3, None),
    "nested count": lambda m: m["positives"][0].__setitem__(3, [1]),
    "negative count": lambda m: m["negatives"][0].__setitem__(3, -1),
    "huge count": lambda m: m["negatives"][0].__setitem__(3, 10**10),
    "confusion shape": _set("confusion", [[1, 1, 0], [0, 2, 1]]),
    "confusion total": lambda m: m["confusion"][0].__setitem__(0, 3),
    "histograms disagree with confusion": _move_count,
}


def test_the_valid_message_parses():
    assert fed.parse_summary(_valid(), Task.BINARY, 2).n == 5


def test_parse_summary_rejects_a_bool_for_a_count_of_one():  # JSON true is no count, even as 1
    message = binary_summary(np.array([1]), np.array([0.9])).to_json()
    message["n"] = True
    with pytest.raises(IncompatibleUpdate, match="n must be an integer"):
        fed.parse_summary(message, Task.BINARY, 2)


@pytest.mark.parametrize("name", MUTATIONS)
def test_parse_summary_rejects_each_malformed_field_with_one_line(name):
    message = _valid()
    MUTATIONS[name](message)
    with pytest.raises(IncompatibleUpdate) as caught:
        fed.parse_summary(message, Task.BINARY, 2)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("score summary:")


@pytest.mark.parametrize("raw", [[_valid()], "summary", None, 5])
def test_parse_summary_rejects_a_message_that_is_not_an_object(raw):
    with pytest.raises(IncompatibleUpdate, match="JSON object"):
        fed.parse_summary(raw, Task.BINARY, 2)


def test_parse_summary_rejects_a_multiclass_message_with_extra_outputs():
    rng = np.random.default_rng(0)
    message = fed.summarize(Task.MULTICLASS, *scored(Task.MULTICLASS, 40, rng, "random"), 0.1).to_json()
    with pytest.raises(IncompatibleUpdate, match="positives"):
        fed.parse_summary(message, Task.MULTICLASS, 3)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)


@given(key=st.sampled_from(sorted(_valid())), value=JSON)
def test_parse_summary_raises_nothing_but_incompatible_update_on_any_json(key, value):
    message = _valid()
    message[key] = value
    try:
        fed.parse_summary(message, Task.BINARY, 2)
    except IncompatibleUpdate:
        pass


# --- at the site ----------------------------------------------------------------------------

@pytest.mark.parametrize("task, y, probs, loss", [
    (Task.BINARY, np.array([0, 1]), np.array([[0.5, 0.5]]), 0.1),  # one row for two labels
    (Task.BINARY, np.array([0, 2]), np.array([[0.5, 0.5], [0.2, 0.8]]), 0.1),  # label 2 of 2
    (Task.MULTICLASS, np.array([0, 1]), np.array([[0.5, np.nan, 0.5], [0.2, 0.3, 0.5]]), 0.1),
    (Task.MULTILABEL, np.array([[0, 1]]), np.array([[0.5, 0.5, 0.5]]), 0.1),
    (Task.BINARY, np.array([0, 1]), np.array([[0.5, 0.5], [0.2, 0.8]]), float("nan")),
])
def test_summarize_refuses_inputs_that_do_not_fit(task, y, probs, loss):
    with pytest.raises(ValueError):
        fed.summarize(task, y, probs, loss)


def test_a_binary_score_of_exactly_one_half_is_called_positive_as_compute_metrics_does():
    y, probs = np.array([1, 0]), np.array([[0.5, 0.5], [0.51, 0.49]])
    s = fed.summarize(Task.BINARY, y, probs, 0.7)
    np.testing.assert_array_equal(s.confusion, [[1, 0], [0, 1]])
    assert fed.summary_metrics(s)["accuracy"] == compute_metrics(Task.BINARY, y, probs)["accuracy"] == 1
