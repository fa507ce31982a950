"""Intensity harmonization per site, so sites whose scanners differ speak one intensity language.

- zscore: each site standardizes its images with the mean and standard deviation of its own pool
  (training and validation) images, then places +-3 sd on [0, 1] (the model's input range).
- histogram: each site summarises its own pool images as a quantile function (QUANTILE_LEVELS
  intensities, an aggregate: no image leaves); the federation averages the sites' quantile
  functions, weighted by pixel count, into a reference; each site maps its images onto the
  reference by piecewise-linear quantile matching (Nyul and Udupa 1999, "On standardizing the MR
  image intensity scale", with all percentiles as landmarks).

A site's statistics come from its own pool and are applied to its own share of the test set, as a
site would at prediction time. In simulation harmonize_source does this for every natural site at
once; a deployed site does it for itself with pool_images / harmonize_site, the reference reaching
it through the federation (the coordinator combines the sites' Quantiles with `reference`). A test set without sites is harmonized as one site of its own.
Sites are the data's natural groups (its hospitals or scanners), whatever the partition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from medfed.data.dataset import DataSource, Samples, SiteData
from medfed.errors import ConfigError

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
Z_SPAN = 6.0  # standard deviations spread over [0, 1]
_TIE_BREAK = 1e-7  # makes a quantile function strictly increasing (flat runs of equal intensity)


@dataclass(frozen=True)
class Quantiles:
    """What a site shares for histogram matching: aggregate statistics, not images."""

    values: np.ndarray  # intensity at each of QUANTILE_LEVELS
    n_pixels: int


def zscore(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.clip(0.5 + (images - mean) / (Z_SPAN * max(std, 1e-6)), 0, 1).astype(np.float32)


def site_quantiles(images: np.ndarray) -> Quantiles:
    return Quantiles(np.quantile(images, QUANTILE_LEVELS).astype(np.float64), int(images.size))


def reference(sites: list[Quantiles]) -> np.ndarray:
    """The federation's reference quantile function: the pixel-weighted mean of the sites'."""
    weights = np.array([q.n_pixels for q in sites], dtype=np.float64)
    return np.average(np.stack([q.values for q in sites]), axis=0, weights=weights)


def match(images: np.ndarray, site: Quantiles, target: np.ndarray) -> np.ndarray:
    """Map intensities so that the site's quantile function becomes the target's."""
    source = site.values + _TIE_BREAK * np.arange(len(site.values))
    return np.interp(images, source, target).astype(np.float32)


def harmonize_source(source: DataSource, method: str) -> DataSource:
    """The same source with every site's pool and test images harmonized (floats in [0, 1])."""
    if method == "none":
        return source
    if source.spatial_dims == 0:
        raise ConfigError(f"--harmonize {method} is for images; {source.name}'s features are "
                          "already imputed and scaled at each site (use --harmonize none)")
    pool_x = source.pool.x.astype(np.float32) / np.float32(source.max_value)
    test_x = source.test.x.astype(np.float32) / np.float32(source.max_value)
    pool_rows, test_rows = _site_rows(source)
    target = None
    if method == "zscore":
        maps = [_zscore_map(pool_x[rows]) for rows in pool_rows]
        own_test = _zscore_map(test_x)
    else:
        fits = [site_quantiles(pool_x[rows]) for rows in pool_rows]
        target = reference(fits)
        maps = [lambda x, q=q: match(x, q, target) for q in fits]
        own_test = lambda x: match(x, site_quantiles(test_x), target)  # noqa: E731
    for site_map, p, t in zip(maps, pool_rows, test_rows, strict=True):
        pool_x[p] = site_map(pool_x[p])
        if t is not None:
            test_x[t] = site_map(test_x[t])
    if test_rows[0] is None:  # a test set without sites: harmonized as one site of its own
        test_x = own_test(test_x)
    harmonized = _with_images(source, pool_x, test_x)
    return harmonized if target is None else replace(
        harmonized, harmonize_reference=tuple(float(v) for v in target))


def _zscore_map(fit_on: np.ndarray):
    mean, std = float(fit_on.mean()), float(fit_on.std())
    return lambda x: zscore(x, mean, std)


def _site_rows(source: DataSource) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Per natural site: its pool rows and its test rows (None when the test set has no sites)."""
    if source.groups is None:
        return [np.arange(len(source.pool))], [None]
    ids = np.unique(source.groups)
    pool = [np.flatnonzero(source.groups == g) for g in ids]
    if source.test_groups is None:
        return pool, [None] * len(ids)
    return pool, [np.flatnonzero(source.test_groups == g) for g in ids]


def _with_images(source: DataSource, pool_x: np.ndarray, test_x: np.ndarray) -> DataSource:
    return replace(source, pool=Samples(pool_x, source.pool.y), test=Samples(test_x, source.test.y),
                   max_value=1.0)


def pool_images(data: SiteData, max_value: float) -> np.ndarray:
    """A site's pool (training and validation) images as floats in [0, 1]: what its statistics
    are fitted on."""
    return np.concatenate([data.train.x, data.val.x]).astype(np.float32) / np.float32(max_value)


def harmonize_site(data: SiteData, method: str, max_value: float,
                   target: np.ndarray | None = None) -> SiteData:
    """One site's splits harmonized with its own statistics (histogram: onto `target`, the
    federation's reference); images become floats in [0, 1]."""
    pool = pool_images(data, max_value)
    if method == "zscore":
        site_map = _zscore_map(pool)
    elif method == "histogram":
        if target is None:
            raise ConfigError("histogram harmonization needs the federation's reference")
        fit = site_quantiles(pool)
        site_map = lambda x: match(x, fit, target)  # noqa: E731
    else:
        return data

    def mapped(samples: Samples) -> Samples:
        return Samples(site_map(samples.x.astype(np.float32) / np.float32(max_value)), samples.y)

    test = mapped(data.test) if data.test is not None else None
    return SiteData(data.site, mapped(data.train), mapped(data.val), test)
