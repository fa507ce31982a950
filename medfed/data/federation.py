"""From a data source to K sites, each with its own train and validation split.

The global test set is the source's official test split; no site ever trains or validates on it.

A site's train / validation split is `site_split`: drawn from the site's own random stream (the
seed and the site's name), stratified by label, so a deployed site that loads only its own data
and calls `site_split` gets the split it has in simulation with every other site.
"""

from __future__ import annotations

import numpy as np

from medfed.config import DataConfig
from medfed.data import partition
from medfed.data.dataset import DataSource, Federation, SiteData
from medfed.data.synthetic import site_names
from medfed.types import Task

PARTITION_TAG = 0x9A27  # the stream that shares a pool out among sites (iid, dirichlet, quantity)
TRAIN_VAL_TAG = 0x7A1  # each site's own stream for its train / validation split


def build_federation(source: DataSource, config: DataConfig, seed: int) -> Federation:
    """The source's pool shared out among the sites as config.partition says; each site split
    into train and validation by site_split."""
    scheme = config.partition or ("natural" if source.groups is not None else "iid")
    rng = np.random.default_rng(np.random.SeedSequence([seed, PARTITION_TAG]))
    shares = _partition(source, config, scheme, rng)
    names = source.group_names if scheme == "natural" else site_names(len(shares))
    sites = {}
    for k, (name, rows) in enumerate(zip(names, shares, strict=True)):
        test_rows = _site_test_rows(source, k) if scheme == "natural" else None
        sites[name] = site_split(source, name, rows, config.val_fraction, seed, test_rows)
    return Federation(source=source, sites=sites, partition=scheme)


def site_split(source: DataSource, name: str, rows: np.ndarray, val_fraction: float, seed: int,
               test_rows: np.ndarray | None = None) -> SiteData:
    """Site `name`'s data: its pool rows split into train and validation (stratified by label,
    by patient or study when the source has units) from the site's own stream, a function of
    (seed, name) only; test_rows, if given, are its share of the source's test set.

    A deployed site that loaded only its own data calls it with every pool row (and every test
    row) and gets the same split as in a simulation of all sites with the same seed."""
    rng = partition.site_rng(seed, TRAIN_VAL_TAG, name)
    train, val = partition.train_val_split(rows, val_fraction, rng, source.units, strata(source))
    test = source.test.subset(test_rows) if test_rows is not None else None
    return SiteData(site=name, train=source.pool.subset(train), val=source.pool.subset(val),
                    test=test)


def _partition(source: DataSource, config: DataConfig, scheme: str, rng: np.random.Generator
               ) -> list[np.ndarray]:
    n, count = len(source.pool), config.site_count
    if scheme == "iid":
        return partition.iid(n, count, rng)
    if scheme == "quantity":
        sizes = config.sizes or partition.counts_from_proportions(
            n, config.proportions or (1.0,) * count)
        return partition.quantity(n, sizes, rng)
    if scheme == "dirichlet":
        proportions = config.proportions or config.sizes
        return partition.dirichlet(strata(source), count, config.alpha, rng, proportions)
    return partition.natural(source.groups, config.sites)


def strata(source: DataSource) -> np.ndarray:
    """The pool's label per sample that splits are stratified on and the Dirichlet skew acts on;
    multi-label sets use 'any finding'."""
    y = source.pool.y
    return (y.sum(axis=1) > 0).astype(np.int64) if source.task is Task.MULTILABEL else y


def _site_test_rows(source: DataSource, k: int) -> np.ndarray | None:
    """With natural sites whose test images are grouped too, each site's own share of the test set."""
    if source.test_groups is None:
        return None
    return np.flatnonzero(source.test_groups == k)
