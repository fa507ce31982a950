"""Harmonization: z-scoring and histogram matching per site, from aggregate statistics only."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from medfed.data import harmonize
from medfed.data.dataset import DataSource, Samples
from medfed.types import Task


def scanner_source(rng: np.random.Generator, n: int = 40) -> DataSource:
    """Two sites imaging the same anatomy through different scanners (gamma, gain, offset)."""
    base = rng.beta(2, 3, (2 * n, 1, 6, 6))
    site = np.repeat([0, 1], n)
    acquired = np.where(site[:, None, None, None] == 0, base, 0.3 + 0.5 * base**0.5)
    x = np.round(acquired * 255).astype(np.uint8)
    y = rng.integers(0, 2, 2 * n)
    pool, test = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)
    return DataSource("two-scanners", Task.BINARY, ("a", "b"), Samples(x[pool], y[pool]),
                      Samples(x[test], y[test]), 255.0, groups=site[pool], test_groups=site[test],
                      group_names=("s0", "s1"))


def site_means(x: np.ndarray, groups: np.ndarray) -> list[float]:
    return [float(x[groups == g].mean()) for g in (0, 1)]


def test_none_leaves_the_source_alone():
    source = scanner_source(np.random.default_rng(0))
    assert harmonize.harmonize_source(source, "none") is source


def test_zscore_gives_every_site_the_same_mean_and_spread():
    source = scanner_source(np.random.default_rng(0))
    before = site_means(source.pool.x / 255.0, source.groups)
    assert abs(before[0] - before[1]) > 0.1
    out = harmonize.harmonize_source(source, "zscore")
    assert out.max_value == 1.0 and out.pool.x.dtype == np.float32
    for g in (0, 1):
        rows = out.pool.x[out.groups == g]
        assert abs(rows.mean() - 0.5) < 1e-3
        assert abs(rows.std() - 1 / harmonize.Z_SPAN) < 0.01  # nothing clipped at +-3 sd here
    test_means = site_means(out.test.x, out.test_groups)
    assert abs(test_means[0] - test_means[1]) < 0.05  # the pool's statistics fit the site's test share


def test_histogram_matching_maps_every_site_onto_the_shared_reference():
    source = scanner_source(np.random.default_rng(1))
    out = harmonize.harmonize_source(source, "histogram")
    pool = source.pool.x.astype(np.float32) / 255
    fits = [harmonize.site_quantiles(pool[source.groups == g]) for g in (0, 1)]
    target = harmonize.reference(fits)
    for g in (0, 1):
        got = np.quantile(out.pool.x[out.groups == g], harmonize.QUANTILE_LEVELS[5:-5])
        np.testing.assert_allclose(got, target[5:-5], atol=0.02)


def test_reference_is_the_pixel_weighted_mean_of_the_sites_quantiles():
    a = harmonize.Quantiles(np.linspace(0, 0.5, 101), 100)
    b = harmonize.Quantiles(np.linspace(0.5, 1.0, 101), 300)
    np.testing.assert_allclose(harmonize.reference([a, b]), np.linspace(0.375, 0.875, 101))


@given(st.lists(st.floats(0, 1), min_size=5, max_size=200))
def test_matching_a_site_to_its_own_quantiles_is_nearly_the_identity(values):
    x = np.array(values, np.float32)
    q = harmonize.site_quantiles(x)
    assert np.all(np.abs(harmonize.match(x, q, q.values) - x) < 1e-4)


def test_a_test_set_without_sites_is_harmonized_as_a_site_of_its_own():
    source = scanner_source(np.random.default_rng(2))
    from dataclasses import replace

    out = harmonize.harmonize_source(replace(source, test_groups=None), "zscore")
    assert abs(out.test.x.mean() - 0.5) < 1e-3
