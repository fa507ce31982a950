"""From a data source to sites: the scheme chosen, site names, train/val/test shares."""

from __future__ import annotations

import numpy as np
import pytest

from medfed.config import PARTITIONS, DataConfig
from medfed.data.dataset import DataSource, Samples
from medfed.data.federation import build_federation
from medfed.data.synthetic import load_synthetic
from medfed.errors import DataError
from medfed.types import Task


def synthetic(sites: int = 3, n: int = 120, n_test: int = 60, seed: int = 0) -> DataSource:
    return load_synthetic(sites, n, n_test, seed)


def plain_source(n: int = 100, multilabel: bool = False) -> DataSource:
    """A source without natural groups (like MedMNIST); x[i] holds i so samples can be traced."""
    x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    if multilabel:
        y = np.zeros((n, 3), np.float32)
        y[: n // 4, 1] = 1
        return DataSource("plain", Task.MULTILABEL, ("a", "b", "c"), Samples(x, y),
                          Samples(x[:10], y[:10]), 255.0)
    y = (np.arange(n) % 2).astype(np.int64)
    return DataSource("plain", Task.BINARY, ("neg", "pos"), Samples(x, y),
                      Samples(x[:10], y[:10]), 255.0)


def traced_indices(federation) -> list[int]:
    return [int(v) for site in federation.sites.values()
            for part in (site.train, site.val) for v in part.x.ravel()]


def test_synthetic_defaults_to_its_natural_sites_with_their_test_shares():
    source = synthetic()
    fed = build_federation(source, DataConfig(sites=3), 0)
    assert fed.partition == "natural"
    assert list(fed.sites) == ["site-a", "site-b", "site-c"]
    for k, site in enumerate(fed.sites.values()):
        assert len(site.train) + len(site.val) == int((source.groups == k).sum())
        assert site.test is not None and len(site.test) == int((source.test_groups == k).sum())
    assert sum(len(s.test) for s in fed.sites.values()) == len(source.test)


def test_a_source_without_groups_defaults_to_iid():
    fed = build_federation(plain_source(), DataConfig(sites=4), 0)
    assert fed.partition == "iid"
    assert list(fed.sites) == ["site-a", "site-b", "site-c", "site-d"]
    assert all(s.test is None for s in fed.sites.values())
    sizes = [len(s.train) + len(s.val) for s in fed.sites.values()]
    assert sizes == [25, 25, 25, 25]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_every_site_gets_train_and_validation_and_no_sample_is_shared(scheme):
    config = DataConfig(sites=4, partition=scheme, sizes=(10, 20, 30, 40), val_fraction=0.2)
    fed = build_federation(plain_source(), config, 0)
    assert fed.partition == scheme
    for site in fed.sites.values():
        assert len(site.train) >= 1 and len(site.val) >= 1
    used = traced_indices(fed)
    assert len(used) == len(set(used))
    if scheme != "quantity":
        assert sorted(used) == list(range(100))


def test_build_federation_is_seeded():
    def sites(seed):
        fed = build_federation(plain_source(), DataConfig(sites=3, partition="dirichlet"),
                               seed)
        return [s.train.x.ravel().tolist() for s in fed.sites.values()]

    assert sites(1) == sites(1)
    assert sites(1) != sites(2)


def test_every_configured_partition_name_is_built():
    source = synthetic()
    for scheme in PARTITIONS:
        config = DataConfig(sites=3, partition=scheme, proportions=(0.3, 0.3, 0.4))
        fed = build_federation(source, config, 0)
        assert fed.partition == scheme and len(fed.sites) == 3


def test_natural_partition_of_data_without_groups_is_a_data_error():
    with pytest.raises(DataError, match="no natural sites"):
        build_federation(plain_source(), DataConfig(sites=3, partition="natural"),
                         0)


def test_dirichlet_on_multilabel_data_skews_on_any_finding():
    config = DataConfig(sites=2, partition="dirichlet")
    fed = build_federation(plain_source(multilabel=True), config, 0)
    used = traced_indices(fed)
    assert sorted(used) == list(range(100))


def test_quantity_without_sizes_gives_equal_shares():
    fed = build_federation(plain_source(), DataConfig(sites=4, partition="quantity"),
                           0)
    assert [len(s.train) + len(s.val) for s in fed.sites.values()] == [25, 25, 25, 25]
