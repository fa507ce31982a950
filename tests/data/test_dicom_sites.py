"""Three DICOM sites, each its own scanner: storage is undone by the loader, the scanner response
by harmonization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfed.config import DataConfig
from medfed.data.sources import load_source
from medfed.data.synthetic import load_synthetic
from tests.dicom_files import write_scanner_sites


def scanner_folder(root: Path, n: int = 60, phi: bool = False) -> Path:
    """Synthetic radiographs (three sites of the built-in generator) written as three scanners."""
    synthetic = load_synthetic(3, n, 10, seed=5)
    images = synthetic.pool.x[:, 0].astype(np.float32) / 255
    return write_scanner_sites(root, images, synthetic.pool.y, synthetic.groups, phi=phi)


@pytest.fixture(scope="module")
def scanners(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scanners")
    return root, scanner_folder(root)


def config(scanners, **kw) -> DataConfig:
    root, labels = scanners
    return DataConfig(**{"dataset": "dicom", "data_dir": str(root), "labels": str(labels),
                         "image_size": 16, "sites": 3, **kw})


def site_means(source) -> np.ndarray:
    x = source.pool.x.astype(np.float32) / source.max_value
    return np.array([x[source.groups == g].mean() for g in range(3)])


def test_storage_is_undone_but_the_scanner_response_is_not(scanners):
    source = load_source(config(scanners), seed=0)
    assert source.group_names == ("scanner-a", "scanner-b", "scanner-c")
    means = site_means(source)
    assert means.max() - means.min() > 0.1  # gamma, gain and offset differ between sites


@pytest.mark.parametrize("method", ["zscore", "histogram"])
def test_harmonization_brings_the_sites_together(scanners, method):
    harmonized = site_means(load_source(config(scanners, harmonize=method), seed=0))
    before = site_means(load_source(config(scanners), seed=0))
    assert np.ptp(harmonized) < 0.25 * np.ptp(before)
