"""The one data contract every source fills, and the per-site view of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfed.types import SiteId, Task


@dataclass(frozen=True)
class Samples:
    """Images (N, C, H, W) or (N, C, D, H, W), or tabular rows (N, F), with their labels.

    Images stay in their stored dtype (uint8 for most medical files) until a batch is drawn, so a
    large 224-px set does not need four times its size in float memory.
    labels: (N,) int64 class indices, or (N, L) float32 0/1 per finding for multi-label tasks.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray) -> Samples:
        return Samples(self.x[index], self.y[index])

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        return Samples(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


@dataclass(frozen=True)
class DataSource:
    """What a loader returns: a pool the sites share out, and the official held-out test set.

    groups / test_groups give each sample's natural site (hospital, scanner) when the data has one.
    units gives each pool sample's patient or study when several images share one, so a site's
    validation split never takes some of a patient's images and leaves the rest to training.
    skipped lists the files a loader could not use, as (path, reason), so none is silently lost.
    notes are facts about the data a user should see (a feature one hospital never recorded).
    """

    name: str
    task: Task
    class_names: tuple[str, ...]
    pool: Samples
    test: Samples
    max_value: float  # intensity of white in x (255 for uint8 files, 1.0 for float data)
    groups: np.ndarray | None = None
    test_groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    units: np.ndarray | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    # histogram harmonization's reference quantile function, kept for the model bundle (bundle.py)
    harmonize_reference: tuple[float, ...] | None = None

    @property
    def spatial_dims(self) -> int:
        return self.pool.x.ndim - 2  # 0 for tabular rows

    @property
    def in_channels(self) -> int:
        return self.pool.x.shape[1]

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class SiteData:
    """One site's own data. In deployment it never leaves the site; here it stays in its trainer."""

    site: SiteId
    train: Samples
    val: Samples
    test: Samples | None = None  # the site's share of the global test set, when sites are natural


@dataclass(frozen=True)
class Federation:
    source: DataSource
    sites: dict[SiteId, SiteData]
    partition: str

    @property
    def site_ids(self) -> list[SiteId]:
        return list(self.sites)


def label_counts(task: Task, y: np.ndarray, num_classes: int) -> list[int]:
    """Samples per class (per finding for multi-label)."""
    if task is Task.MULTILABEL:
        return [int(v) for v in y.sum(axis=0)]
    return [int(v) for v in np.bincount(y.astype(np.int64), minlength=num_classes)]
