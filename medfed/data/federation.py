"""From a data source to K sites, each with its own train and validation split.

The global test set is the source's official test split; no site ever trains or validates on it.
"""

from __future__ import annotations

import numpy as np

from medfed.config import DataConfig
from medfed.data import partition
from medfed.data.dataset import DataSource, Federation, SiteData
from medfed.data.synthetic import site_names
from medfed.types import Task


def build_federation(source: DataSource, config: DataConfig, rng: np.random.Generator) -> Federation:
    scheme = config.partition or ("natural" if source.groups is not None else "iid")
    shares = _partition(source, config, scheme, rng)
    names = source.group_names if scheme == "natural" else site_names(config.sites)
    sites = {}
    for k, (name, index) in enumerate(zip(names, shares, strict=True)):
        train, val = partition.train_val_split(index, config.val_fraction, rng, source.units)
        sites[name] = SiteData(site=name, train=source.pool.subset(train),
                               val=source.pool.subset(val), test=_site_test(source, scheme, k))
    return Federation(source=source, sites=sites, partition=scheme)


def _partition(source: DataSource, config: DataConfig, scheme: str, rng: np.random.Generator
               ) -> list[np.ndarray]:
    n = len(source.pool)
    if scheme == "iid":
        return partition.iid(n, config.sites, rng)
    if scheme == "quantity":
        sizes = config.sizes or partition.counts_from_proportions(
            n, config.proportions or (1.0,) * config.sites)
        return partition.quantity(n, sizes, rng)
    if scheme == "dirichlet":
        proportions = config.proportions or config.sizes
        return partition.dirichlet(_strata(source), config.sites, config.alpha, rng, proportions)
    return partition.natural(source.groups, config.sites)


def _strata(source: DataSource) -> np.ndarray:
    """The label the Dirichlet skew acts on; multi-label sets are skewed on 'any finding'."""
    y = source.pool.y
    return (y.sum(axis=1) > 0).astype(np.int64) if source.task is Task.MULTILABEL else y


def _site_test(source: DataSource, scheme: str, k: int):
    """With natural sites whose test images are grouped too, each site's own share of the test set."""
    if scheme != "natural" or source.test_groups is None:
        return None
    return source.test.subset(np.flatnonzero(source.test_groups == k))
