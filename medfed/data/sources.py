"""The registry of data sources: name -> loader reading the [data] config."""

from __future__ import annotations

from collections.abc import Callable

from medfed.config import DataConfig
from medfed.data.chestxray14 import load_chestxray14
from medfed.data.dataset import DataSource
from medfed.data.dicom import load_dicom
from medfed.data.harmonize import harmonize_source
from medfed.data.heart import load_heart_disease
from medfed.data.images import load_images
from medfed.data.medmnist import load_medmnist
from medfed.data.nifti import load_nifti
from medfed.data.synthetic import load_synthetic
from medfed.registry import Registry

Loader = Callable[[DataConfig, int], DataSource]

SOURCES: Registry[Loader] = Registry("dataset", {
    "synthetic": lambda cfg, seed: load_synthetic(cfg.site_count, cfg.synthetic_samples,
                                                  cfg.synthetic_test, seed, cfg.sizes,
                                                  cfg.proportions),
    "medmnist": lambda cfg, seed: load_medmnist(cfg.data_file),
    "dicom": load_dicom,
    "nifti": load_nifti,
    "chestxray14": load_chestxray14,
    "heart-disease": load_heart_disease,
    "images": load_images,
})


def load_source(config: DataConfig, seed: int) -> DataSource:
    """The data set, harmonized per site as config.harmonize asks (harmonize.py)."""
    return harmonize_source(SOURCES[config.dataset](config, seed), config.harmonize)
