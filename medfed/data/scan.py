"""A site's folder of image files, read into records: what the DICOM, NIfTI and ChestX-ray14
loaders share.

A scan keeps every readable image (resized to a common size, intensities in [0, 1]) with its site,
its label and what must stay on one side of a split (its study or patient), and lists every file
it could not use with the reason. From a scan come the data source (with a seeded, stratified
held-out test split per site) and the per-site data report (check.py).

Each top-level subfolder of the data folder is one site, unless the folder is one site's own data
(DataConfig.site_name: a deployed site reading its folder): then all of it is that site. A site's
test share is drawn from its own random stream (the seed and its name), so it is the same whether
the site's folder is read alone or beside the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfed.config import DataConfig
from medfed.data.dataset import DataSource, Samples
from medfed.data.labels import encode_labels, load_label_map
from medfed.data.partition import site_rng
from medfed.data.transforms import area_resize
from medfed.errors import DataError
from medfed.types import Task

DEFAULT_SIZE_2D = 64  # files differ in size; without --image-size they are resized to this
DEFAULT_SIZE_3D = 32
HOLDOUT_TAG = 0x7E57  # each site's stream for its held-out test share
IGNORED_SUFFIXES = frozenset({".csv", ".toml", ".txt", ".json", ".md", ".xml", ".html", ".py",
                              ".sh", ".log", ".pdf"})


@dataclass(frozen=True)
class Skipped:
    path: str  # relative to the data folder
    reason: str  # a category (never a value read from the file)


@dataclass(frozen=True)
class Record:
    path: str  # relative to the data folder, posix
    site: str
    image: np.ndarray  # (C, *spatial) float32 in [0, 1], at the common size
    native_shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    unit: str  # what stays on one side of every split: a study, a patient, a file
    label: object = None  # a label name, a tuple of findings (multi-label), or None if unlabeled


@dataclass
class Scan:
    kind: str
    data_dir: Path
    records: list[Record] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    phi: dict[str, int] = field(default_factory=dict)  # identifying tag keyword -> files
    site_name: str | None = None  # all of data_dir is this one site (see site_of)

    @property
    def sites(self) -> list[str]:
        return sorted({r.site for r in self.records})

    def labelled(self) -> list[Record]:
        return [r for r in self.records if r.label is not None]


def require_dir(data_dir: str | Path | None, dataset: str) -> Path:
    if data_dir is None:
        raise DataError(f"--dataset {dataset} needs --data-dir: the folder that holds the files")
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"data folder not found: {path}")
    return path


def files_under(data_dir: Path, suffixes: tuple[str, ...] = ()) -> Iterator[Path]:
    """Files below data_dir in a stable order; hidden files and side files (CSV, TOML...) left out."""
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if not path.is_file() or any(p.startswith(".") for p in rel.parts):
            continue
        name = path.name.lower()
        wanted = name.endswith(suffixes) if suffixes else path.suffix.lower() not in IGNORED_SUFFIXES
        if not wanted:
            continue
        yield path


def site_of(rel: Path, data_dir: Path, site_name: str | None = None) -> str:
    """Each top-level subfolder is one site; files directly in the data folder form one site.
    With site_name, the whole folder is that one site (a deployed site's own data)."""
    if site_name is not None:
        return site_name
    return rel.parts[0] if len(rel.parts) > 1 else data_dir.resolve().name


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """(C, *spatial) -> (C, size, ...) with area averaging (no aliasing when shrinking)."""
    spatial = (size,) * (image.ndim - 1)
    if image.shape[1:] == spatial:
        return image.astype(np.float32, copy=False)
    out = area_resize(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None], spatial)
    return out[0].numpy()


def holdout(strata: np.ndarray, sites: np.ndarray, units: np.ndarray, fraction: float,
            seed: int) -> np.ndarray:
    """A boolean test mask: per site and per stratum, `fraction` of the units (studies, patients),
    drawn at random from the site's own stream (seed, site name), with all their images. No unit
    is on both sides, and a site's mask does not depend on the other sites."""
    is_test = np.zeros(len(units), dtype=bool)
    unit_ids, first = np.unique(units, return_index=True)
    for site in np.unique(sites):
        rng = site_rng(seed, HOLDOUT_TAG, str(site))
        mine = sites[first] == site
        for s in np.unique(strata[first][mine]):
            members = unit_ids[mine & (strata[first] == s)]
            n_test = round(fraction * len(members))
            is_test |= np.isin(units, rng.permutation(members)[:n_test])
    return is_test


def labelled_source(name: str, what: str, scan: Scan, config: DataConfig, seed: int) -> DataSource:
    """A scan's labelled records as a DataSource, labels mapped by config.label_map; `what` names
    the files in the error when none of them is usable (e.g. "DICOM image")."""
    records = scan.labelled()
    if not records:
        raise DataError(f"no readable {what} under {scan.data_dir} has a label in {config.labels} "
                        f"({len(scan.records)} readable, {len(scan.skipped)} skipped)")
    label_map = load_label_map(config.label_map) if config.label_map else None
    classes, y = encode_labels([r.site for r in records], [str(r.label) for r in records], label_map)
    task = Task.BINARY if len(classes) == 2 else Task.MULTICLASS
    return build_source(name, task, classes, records, y, config.test_fraction, seed, scan.skipped)


def build_source(name: str, task: Task, classes: tuple[str, ...], records: list[Record],
                 y: np.ndarray, test_fraction: float, seed: int, skipped: list[Skipped]
                 ) -> DataSource:
    """Records with their encoded labels -> a DataSource whose natural groups are the sites and
    whose test set is a seeded, stratified, unit-level held-out share of every site."""
    if not records:
        raise DataError(f"no labelled, readable images for {name}; run `medfed data check` to see why")
    site_names = tuple(sorted({r.site for r in records}))
    groups = np.array([site_names.index(r.site) for r in records])
    _, units = np.unique([f"{r.site}/{r.unit}" for r in records], return_inverse=True)
    strata = (y.sum(axis=1) > 0).astype(np.int64) if task is Task.MULTILABEL else y
    is_test = holdout(strata, np.array([r.site for r in records]), units, test_fraction, seed)
    if not is_test.any() or is_test.all():
        raise DataError(f"{len(records)} images are too few to hold out a test share of "
                        f"{test_fraction}; add images or change test_fraction")
    x = np.stack([r.image for r in records])
    pool, test = ~is_test, is_test
    return DataSource(name=name, task=task, class_names=classes,
                      pool=Samples(x[pool], y[pool]), test=Samples(x[test], y[test]), max_value=1.0,
                      groups=groups[pool], test_groups=groups[test], group_names=site_names,
                      units=units[pool], skipped=tuple((s.path, s.reason) for s in skipped))
