"""The registry of data sources: name -> loader reading the [data] config."""

from __future__ import annotations

from collections.abc import Callable

from medfed.config import DataConfig
from medfed.data.dataset import DataSource
from medfed.data.harmonize import harmonize_source
from medfed.data.heart import load_heart_disease
from medfed.data.medmnist import load_medmnist
from medfed.data.synthetic import load_synthetic
from medfed.registry import Registry

Loader = Callable[[DataConfig, int], DataSource]


# The readers of image files import their libraries (pydicom, nibabel, Pillow) when a run reads
# such files, so that importing medfed, or a run on other data, does not pay for them.

def _dicom(config: DataConfig, seed: int) -> DataSource:
    from medfed.data.dicom import load_dicom

    return load_dicom(config, seed)


def _nifti(config: DataConfig, seed: int) -> DataSource:
    from medfed.data.nifti import load_nifti

    return load_nifti(config, seed)


def _chestxray14(config: DataConfig, seed: int) -> DataSource:
    from medfed.data.chestxray14 import load_chestxray14

    return load_chestxray14(config, seed)


def _images(config: DataConfig, seed: int) -> DataSource:
    from medfed.data.images import load_images

    return load_images(config, seed)


SOURCES: Registry[Loader] = Registry("dataset", {
    "synthetic": lambda cfg, seed: load_synthetic(cfg.site_count, cfg.synthetic_samples,
                                                  cfg.synthetic_test, seed, cfg.sizes,
                                                  cfg.proportions),
    "medmnist": lambda cfg, seed: load_medmnist(cfg.data_file),
    "dicom": _dicom,
    "nifti": _nifti,
    "chestxray14": _chestxray14,
    "heart-disease": load_heart_disease,
    "images": _images,
})


def load_source(config: DataConfig, seed: int) -> DataSource:
    """The data set, harmonized per site as config.harmonize asks (harmonize.py)."""
    return harmonize_source(SOURCES[config.dataset](config, seed), config.harmonize)
