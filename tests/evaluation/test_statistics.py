"""Clinical statistics against references: AUC against scikit-learn, DeLong's variance against
the explicit O(mn) placement values and against the bootstrap, the bootstrap against exact
enumeration on a tiny case, the paired t-test against scipy, and hand-worked thresholds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import roc_auc_score

from medfed.evaluation import statistics as s


@st.composite
def labelled_scores(draw, min_size=4, max_size=40):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    y[0], y[1] = 0, 1  # both classes present
    levels = draw(st.integers(2, 20))  # few levels: many ties
    score = np.array(draw(st.lists(st.integers(0, levels), min_size=n, max_size=n))) / levels
    return y, score


def brute_force_delong(y, scores):
    """DeLong 1988 directly: psi over every positive-negative pair."""
    aucs, v10s, v01s = [], [], []
    for score in scores:
        pos, neg = score[y == 1], score[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    v10, v01 = np.array(v10s), np.array(v01s)
    cov = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    return np.array(aucs), cov


@given(labelled_scores(), labelled_scores())
def test_row_wise_auc_is_auc_of_each_row_and_nan_for_a_row_of_one_class(case, other):
    (y, score), (_, other_score) = case, other
    k = min(len(score), len(other_score))
    labels = np.stack([y[:k], y[:k], np.zeros(k, dtype=y.dtype)])
    scores = np.stack([score[:k], other_score[:k], score[:k]])
    rows = s.auc_rows(labels, scores)
    assert rows[0] == s.auc(y[:k], score[:k]) and rows[1] == s.auc(y[:k], other_score[:k])
    assert np.isnan(rows[2])


def test_the_bootstrap_interval_of_auc_is_the_same_row_wise_as_one_resample_at_a_time():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    score = np.round(np.clip(y * 0.2 + rng.random(80), 0, 1), 1)  # ties
    fast = s.bootstrap_ci(y, score, s.auc, np.random.default_rng(4), 300)
    one_by_one = s.bootstrap_ci(y, score, lambda a, b: s.auc(a, b), np.random.default_rng(4), 300)
    assert fast == one_by_one
    paired = s.paired_bootstrap(y, score, score[::-1].copy(), s.auc, np.random.default_rng(5), 300)
    paired_loop = s.paired_bootstrap(y, score, score[::-1].copy(), lambda a, b: s.auc(a, b),
                                     np.random.default_rng(5), 300)
    assert paired == paired_loop


@given(labelled_scores())
def test_delong_and_rank_auc_equal_scikit_learns(case):
    y, score = case
    aucs, _ = s.delong_covariance(y, score[None, :])
    assert aucs[0] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert s.auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


@given(labelled_scores(min_size=6), st.randoms())
def test_delong_covariance_equals_the_explicit_placement_values(case, rnd):
    y, score_a = case
    score_b = np.array([rnd.random() for _ in score_a])
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        return  # a covariance needs two of each class
    aucs, cov = s.delong_covariance(y, np.vstack([score_a, score_b]))
    ref_aucs, ref_cov = brute_force_delong(y, np.vstack([score_a, score_b]))
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)


def test_delong_standard_error_agrees_with_the_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    score = y * 0.8 + rng.normal(0, 1, 400)
    _, cov = s.delong_covariance(y, score[None, :])
    boot = [s.auc(y[i], score[i]) for i in s.bootstrap_indices(y, 3000, rng)]
    assert float(cov[0, 0]) ** 0.5 == pytest.approx(np.std(boot), rel=0.1)


def test_delong_test_finds_a_real_difference_and_none_between_equal_models():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    good, poor = y * 2.0 + rng.normal(0, 1, 300), y * 0.3 + rng.normal(0, 1, 300)
    result = s.delong_test(y, good, poor)
    assert result.difference > 0.2 and result.p_value < 1e-6 and result.low > 0
    same = s.delong_test(y, good, good * 3 + 1)  # a monotone transform ranks identically
    assert same.difference == 0 and same.p_value == 1.0


def test_bootstrap_interval_matches_exact_enumeration_on_a_tiny_case():
    y = np.array([0, 1, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.2])
    exact = []
    for idx in itertools.product(range(5), repeat=5):  # all 3,125 resamples
        idx = np.array(idx)
        if len(np.unique(y[idx])) == 2:
            exact.append(s.auc(y[idx], score[idx]))
    interval = s.bootstrap_ci(y, score, s.auc, np.random.default_rng(2), n_boot=20000)
    expected = np.quantile(exact, [0.025, 0.975])
    assert interval.estimate == pytest.approx(roc_auc_score(y, score))
    assert interval.low == pytest.approx(expected[0], abs=0.02)
    assert interval.high == pytest.approx(expected[1], abs=0.02)


def test_delong_with_a_single_case_of_a_class_says_so():
    y, score = np.array([0, 0, 1]), np.array([0.1, 0.5, 0.7])
    with pytest.raises(ValueError, match="at least two positive"):
        s.delong_test(y, score, score[::-1])


def test_bootstrap_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        s.bootstrap_indices(np.zeros(5, int), 10, np.random.default_rng(0))


def test_paired_bootstrap_of_a_model_against_itself_is_no_difference():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 100)
    score = rng.random(100)
    result = s.paired_bootstrap(y, score, score, s.auc, rng, n_boot=200)
    assert (result.difference, result.low, result.high, result.p_value) == (0, 0, 0, 1.0)


def test_paired_bootstrap_agrees_with_delong_on_a_clear_difference():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    a, b = y * 1.5 + rng.normal(0, 1, 300), y * 0.5 + rng.normal(0, 1, 300)
    boot = s.paired_bootstrap(y, a, b, s.auc, rng, n_boot=1000)
    delong = s.delong_test(y, a, b)
    assert boot.difference == pytest.approx(delong.difference)
    assert boot.low == pytest.approx(delong.low, abs=0.03)
    assert boot.high == pytest.approx(delong.high, abs=0.03)
    assert boot.p_value < 0.01 and delong.p_value < 0.01


def test_paired_t_test_matches_scipy():
    a = np.array([0.91, 0.93, 0.92, 0.95, 0.90])
    b = np.array([0.88, 0.90, 0.91, 0.91, 0.89])
    result = s.paired_t_test(a, b)
    reference = stats.ttest_rel(a, b)
    assert result.p_value == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high))
    assert result.difference == pytest.approx(np.mean(a - b))


def test_reliability_and_ece_on_a_hand_worked_case():
    y = np.array([0, 0, 1, 1, 1, 0])
    score = np.array([0.05, 0.15, 0.95, 0.85, 0.55, 0.45])  # bins (10): 0, 1, 9, 8, 5, 4
    r = s.reliability(y, score)
    assert r.counts.tolist() == [1, 1, 0, 0, 1, 1, 0, 0, 1, 1]
    # per filled bin |observed - predicted|: .05, .15, .45, .45, .15, .05 -> mean 0.2167
    assert r.ece == pytest.approx((0.05 + 0.15 + 0.45 + 0.45 + 0.15 + 0.05) / 6)
    assert np.isnan(r.observed_rate[2]) and r.observed_rate[5] == 1.0


def test_a_perfectly_calibrated_score_has_a_small_ece():
    rng = np.random.default_rng(5)
    score = rng.random(20000)
    y = (rng.random(20000) < score).astype(int)
    assert s.reliability(y, score).ece < 0.02


def test_operating_points_chosen_on_validation_data():
    y_val = np.array([0, 0, 0, 1, 1, 1])
    score_val = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    assert s.youden_threshold(y_val, score_val) == 0.4  # J = 2/3 at 0.7 and 0.4: the lower wins
    assert s.threshold_for_sensitivity(y_val, score_val, 1.0) == 0.4
    assert s.rates_at(y_val, score_val, 0.4) == (1.0, pytest.approx(2 / 3))
    with pytest.raises(ValueError, match="target sensitivity"):
        s.threshold_for_sensitivity(y_val, score_val, 0)


def test_vectorized_bootstrap_metrics_match_scikit_learn_on_each_resample():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 60)
    score = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    intervals = s.bootstrap_binary_metrics(y, score, np.random.default_rng(7), n_boot=300)
    index = s.bootstrap_indices(y, 300, np.random.default_rng(7))  # the same resamples
    reference = {
        "auc": [roc_auc_score(y[i], score[i]) for i in index],
        "accuracy": [accuracy_score(y[i], score[i] >= 0.5) for i in index],
        "precision": [precision_score(y[i], score[i] >= 0.5, zero_division=0) for i in index],
        "sensitivity": [recall_score(y[i], score[i] >= 0.5) for i in index],
        "specificity": [recall_score(1 - y[i], score[i] < 0.5) for i in index],
        "f1": [f1_score(y[i], score[i] >= 0.5, zero_division=0) for i in index],
    }
    for name, values in reference.items():
        np.testing.assert_allclose(intervals[name], np.quantile(values, [0.025, 0.975]), atol=1e-12)
