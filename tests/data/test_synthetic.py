"""The built-in synthetic data: seeded, shaped like an 8-bit radiograph set, one group per site."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.data.synthetic import (
    DEFAULT_PROPORTIONS,
    IMAGE_SIZE,
    load_synthetic,
    random_scanner,
    site_names,
)
from medfed.types import Task


@pytest.fixture(scope="module")
def source():
    return load_synthetic(3, 200, 100, seed=0)


def test_images_are_single_channel_uint8_and_labels_binary(source):
    assert source.name == "synthetic" and source.task is Task.BINARY
    assert source.class_names == ("normal", "finding")
    assert source.pool.x.shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert source.pool.x.dtype == np.uint8 and source.max_value == 255.0
    assert source.pool.y.dtype == np.int64
    assert set(np.unique(source.pool.y)) == {0, 1}
    assert set(np.unique(source.test.y)) == {0, 1}
    assert source.pool.x.std() > 10  # an image, not a constant


def test_sizes_follow_the_default_site_proportions(source):
    share = np.array(DEFAULT_PROPORTIONS[:3]) / sum(DEFAULT_PROPORTIONS[:3])
    assert np.bincount(source.groups).tolist() == np.round(share * 200).astype(int).tolist()
    assert np.bincount(source.test_groups).tolist() == np.round(share * 100).astype(int).tolist()
    assert len(source.groups) == len(source.pool) and len(source.test_groups) == len(source.test)
    assert source.group_names == ("site-a", "site-b", "site-c")


def test_proportions_share_the_pool_and_the_test_set():
    source = load_synthetic(3, 200, 40, seed=0, proportions=(1, 1, 2))
    assert np.bincount(source.groups).tolist() == [50, 50, 100]
    assert np.bincount(source.test_groups).tolist() == [10, 10, 20]


def test_sizes_are_exact_site_counts():
    source = load_synthetic(3, 200, 40, seed=0, sizes=(30, 40, 50))
    assert np.bincount(source.groups).tolist() == [30, 40, 50]
    assert np.bincount(source.test_groups).tolist() == [10, 13, 17]


def test_every_site_keeps_at_least_two_pool_images():
    source = load_synthetic(5, 10, 10, seed=0, proportions=(1, 1, 1, 1, 100))
    assert np.bincount(source.groups).min() >= 2


def test_same_seed_same_data_and_different_seed_different_data(source):
    again = load_synthetic(3, 200, 100, seed=0)
    other = load_synthetic(3, 200, 100, seed=1)
    np.testing.assert_array_equal(source.pool.x, again.pool.x)
    np.testing.assert_array_equal(source.pool.y, again.pool.y)
    np.testing.assert_array_equal(source.test.x, again.test.x)
    assert not np.array_equal(source.pool.x, other.pool.x)


def test_sites_look_different_like_different_scanners(source):
    means = [source.pool.x[source.groups == k].mean() for k in range(3)]
    assert max(means) - min(means) > 1.0  # grey levels differ between sites


def test_site_names():
    assert site_names(3) == ("site-a", "site-b", "site-c")
    assert site_names(26)[-1] == "site-z"
    many = site_names(30)
    assert many[0] == "site-01" and many[-1] == "site-30" and len(set(many)) == 30


@given(seed=st.integers(0, 2**32 - 1))
def test_scanners_stay_in_their_documented_ranges(seed):
    s = random_scanner(np.random.default_rng(seed))
    assert 0.75 <= s.gamma <= 1.35 and 0.75 <= s.contrast <= 1.25
    assert -0.1 <= s.brightness <= 0.1 and 0.02 <= s.noise <= 0.09
    assert 0 <= s.blur <= 1.0 and 0.2 <= s.prevalence <= 0.6
