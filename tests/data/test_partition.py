"""Partitioners: seeded, sized as asked, every sample used at most (or exactly) once, and clear
errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.data import partition
from medfed.errors import DataError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def labels_of(n_per_class: int, n_classes: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), n_per_class)


def split(scheme: str, seed: int) -> list[np.ndarray]:
    labels = labels_of(100, 3)
    if scheme == "iid":
        return partition.iid(300, 4, rng(seed))
    if scheme == "quantity":
        return partition.quantity(300, (20, 25, 15, 30), rng(seed))
    return partition.dirichlet(labels, 4, 0.5, rng(seed))


def assert_disjoint(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "an index was given to two sites (or twice)"
    assert joined.min() >= 0 and joined.max() < n


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


# --- determinism -----------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["iid", "quantity", "dirichlet"])
def test_same_seed_gives_the_same_split(scheme):
    a, b = split(scheme, 7), split(scheme, 7)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("scheme", ["iid", "quantity", "dirichlet"])
def test_different_seed_gives_a_different_split(scheme):
    a, b = split(scheme, 7), split(scheme, 8)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_each_site_index_is_sorted():
    for scheme in ("iid", "quantity", "dirichlet"):
        for part in split(scheme, 1):
            np.testing.assert_array_equal(part, np.sort(part))


# --- iid ---------------------------------------------------------------------------------------

@given(n=st.integers(1, 500), sites=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_iid_is_near_equal_and_uses_every_index_once(n, sites, seed):
    if sites > n:
        with pytest.raises(DataError):
            partition.iid(n, sites, rng(seed))
        return
    parts = partition.iid(n, sites, rng(seed))
    sizes = [len(p) for p in parts]
    assert len(parts) == sites
    assert max(sizes) - min(sizes) <= 1
    assert_exact_cover(parts, n)


def test_iid_is_shuffled_not_contiguous():
    parts = partition.iid(100, 2, rng(0))
    assert not np.array_equal(parts[0], np.arange(50))


# --- quantity ----------------------------------------------------------------------------------

def test_quantity_with_counts_gives_exactly_those_sizes():
    parts = partition.quantity(100, (10, 20, 30), rng(0))
    assert [len(p) for p in parts] == [10, 20, 30]
    assert_disjoint(parts, 100)


def test_quantity_with_counts_summing_to_n_covers_everything():
    parts = partition.quantity(60, (10, 20, 30), rng(0))
    assert_exact_cover(parts, 60)


def test_proportions_keep_their_ratios_and_use_the_whole_pool():
    # The radiology paper's five sites (20k/25k/15k/30k/22k) as proportions of 100 samples.
    counts = partition.counts_from_proportions(100, (20, 25, 15, 30, 22))
    assert sum(counts) == 100
    exact = np.array((20, 25, 15, 30, 22)) / 112 * 100
    assert np.all(np.abs(np.array(counts) - exact) < 1)
    parts = partition.quantity(100, counts, rng(0))
    assert_exact_cover(parts, 100)


def test_fractional_proportions():
    assert partition.counts_from_proportions(200, (0.5, 0.25, 0.25)) == [100, 50, 50]


def test_quantity_refuses_counts_larger_than_the_pool():
    with pytest.raises(DataError, match="more than the 100 samples"):
        partition.quantity(100, (20, 25, 15, 30, 22, 1000), rng(0))


@given(n=st.integers(5, 400),
       sizes=st.lists(st.integers(1, 100), min_size=1, max_size=6),
       seed=st.integers(0, 1000))
def test_quantity_uses_each_index_at_most_once(n, sizes, seed):
    try:
        parts = partition.quantity(n, sizes, rng(seed))
    except DataError:
        return  # a site would be empty: refused, which is the other allowed answer
    assert len(parts) == len(sizes)
    assert all(len(p) >= 1 for p in parts)
    assert sum(len(p) for p in parts) <= n
    assert_disjoint(parts, n)


# --- dirichlet ---------------------------------------------------------------------------------

@given(seed=st.integers(0, 2**32 - 1), alpha=st.sampled_from([0.1, 0.5, 1.0, 10.0]),
       sites=st.integers(1, 5))
def test_dirichlet_uses_every_index_exactly_once(seed, alpha, sites):
    labels = labels_of(40, 3)
    try:
        parts = partition.dirichlet(labels, sites, alpha, rng(seed))
    except DataError:
        return
    assert len(parts) == sites
    assert all(len(p) >= partition.MIN_SITE_SIZE for p in parts)
    assert_exact_cover(parts, len(labels))


def test_dirichlet_equal_sites_are_equal_in_expectation():
    labels = labels_of(500, 2)
    # alpha sets the spread, not the mean; a large one keeps the check tight (sd of the mean ~0.004)
    shares = np.mean([[len(p) / len(labels) for p in partition.dirichlet(labels, 4, 20.0, rng(s))]
                      for s in range(100)], axis=0)
    np.testing.assert_allclose(shares, 0.25, atol=0.02)


def test_dirichlet_with_sizes_follows_the_proportions_in_expectation():
    labels = labels_of(500, 2)
    sizes = (20, 25, 15, 30, 22)
    target = np.array(sizes) / sum(sizes)
    draws = [partition.dirichlet(labels, 5, 20.0, rng(s), sizes) for s in range(100)]
    shares = np.mean([[len(p) / len(labels) for p in parts] for parts in draws], axis=0)
    np.testing.assert_allclose(shares, target, atol=0.02)
    assert np.argmax(shares) == 3 and np.argmin(shares) == 2  # 30 is the largest, 15 the smallest


def label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each site's label distribution and the pool's."""
    classes = np.unique(labels)
    overall = np.bincount(labels, minlength=len(classes)) / len(labels)
    distances = []
    for p in parts:
        local = np.bincount(labels[p], minlength=len(classes)) / len(p)
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


def test_smaller_alpha_gives_more_label_skew():
    labels = labels_of(200, 4)
    skew = {alpha: np.mean([label_skew(partition.dirichlet(labels, 5, alpha, rng(s)), labels)
                            for s in range(5)])
            for alpha in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.3  # strongly skewed
    assert skew[100.0] < 0.1  # close to iid


# --- natural -----------------------------------------------------------------------------------

def test_natural_gives_one_site_per_group_in_group_order():
    groups = np.array([2, 0, 1, 0, 2, 2, 1])
    parts = partition.natural(groups, 3)
    assert [p.tolist() for p in parts] == [[1, 3], [2, 6], [0, 4, 5]]
    assert_exact_cover(parts, len(groups))


# --- train / validation ------------------------------------------------------------------------

@given(n=st.integers(2, 300), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_train_val_split_is_a_disjoint_cover_with_both_parts_non_empty(n, fraction, seed):
    index = np.arange(1000, 1000 + n)
    train, val = partition.train_val_split(index, fraction, rng(seed))
    assert len(train) >= 1 and len(val) >= 1
    assert len(val) == min(max(1, round(n * fraction)), n - 1)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), index)


def test_train_val_split_is_seeded():
    index = np.arange(50)
    a = partition.train_val_split(index, 0.2, rng(3))
    b = partition.train_val_split(index, 0.2, rng(3))
    c = partition.train_val_split(index, 0.2, rng(4))
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_rejects_alpha_not_positive(alpha):
    with pytest.raises(DataError, match="alpha"):
        partition.dirichlet(labels_of(10, 2), 2, alpha, rng())


@pytest.mark.parametrize("call", [
    lambda: partition.iid(3, 5, rng()),
    lambda: partition.quantity(3, (1, 1, 1, 1, 1), rng()),
    lambda: partition.dirichlet(labels_of(1, 3), 5, 1.0, rng()),
], ids=["iid", "quantity", "dirichlet"])
def test_more_sites_than_samples_is_refused(call):
    with pytest.raises(DataError, match="cannot split 3 samples into 5 sites"):
        call()


@pytest.mark.parametrize("call", [
    lambda: partition.iid(10, 0, rng()),
    lambda: partition.quantity(10, (), rng()),
], ids=["iid", "quantity"])
def test_zero_sites_is_refused(call):
    with pytest.raises(DataError, match="at least one site"):
        call()


def test_quantity_refuses_sizes_that_leave_a_site_empty():
    with pytest.raises(DataError, match="at least 2 samples"):
        partition.quantity(10, (1, 1000), rng())


def test_quantity_refuses_non_positive_sizes():
    with pytest.raises(DataError, match="at least 2 samples"):
        partition.quantity(10, (5, 0), rng())


def test_dirichlet_refuses_when_every_draw_leaves_a_site_too_small():
    with pytest.raises(DataError, match="fewer than 2 samples"):
        partition.dirichlet(labels_of(4, 2), 4, 0.001, rng())


def test_natural_refuses_a_wrong_site_count():
    with pytest.raises(DataError, match="3 natural sites but --sites is 2"):
        partition.natural(np.array([0, 1, 2, 0]), 2)


def test_natural_refuses_data_without_groups():
    with pytest.raises(DataError, match="no natural sites"):
        partition.natural(None, 3)


@pytest.mark.parametrize("n", [0, 1])
def test_a_site_too_small_for_train_and_validation_is_refused(n):
    with pytest.raises(DataError, match="cannot be split"):
        partition.train_val_split(np.arange(n), 0.1, rng())


def test_dirichlet_with_proportions_fixes_site_sizes_and_keeps_label_skew():
    labels = labels_of(500, 2)
    parts = partition.dirichlet(labels, 5, 0.5, rng(0), (20, 25, 15, 30, 22))
    assert [len(p) for p in parts] == partition.counts_from_proportions(1000, (20, 25, 15, 30, 22))
    assert_exact_cover(parts, 1000)
    positive_rates = [labels[p].mean() for p in parts]
    assert max(positive_rates) - min(positive_rates) > 0.3  # skewed, not iid
    iid_like = partition.dirichlet(labels, 5, 1000.0, rng(0), (20, 25, 15, 30, 22))
    assert max(labels[p].mean() for p in iid_like) - min(labels[p].mean() for p in iid_like) < 0.15
