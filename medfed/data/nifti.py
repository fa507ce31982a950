"""NIfTI volumes (nibabel) with a CSV of labels (columns file,label), for 3D models.

Each volume is read in its stored orientation as (z, y, x), its intensities clipped to its own
0.5th-99.5th percentiles and scaled to [0, 1] (NIfTI holds anything from CT Hounsfield units to
arbitrary MR units, so a fixed range would not do), and resized to a cube (--image-size, default
32). Each top-level subfolder of the data folder is one site (with site_name, the whole folder
is that one site); unreadable files are skipped and
listed.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medfed.config import DataConfig
from medfed.data.dataset import DataSource
from medfed.data.labels import read_labels
from medfed.data.scan import (
    DEFAULT_SIZE_3D,
    Record,
    Scan,
    Skipped,
    files_under,
    labelled_source,
    require_dir,
    resize,
    site_of,
)
from medfed.errors import DataError

SUFFIXES = (".nii", ".nii.gz")
PERCENTILES = (0.5, 99.5)


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """(volume (z, y, x) float32 in [0, 1], voxel spacing (z, y, x) in mm). Raises on a bad file."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"not a 3D volume (shape {data.shape})")
    low, high = np.percentile(data, PERCENTILES)
    scaled = np.clip((data - low) / (high - low), 0, 1) if high > low else np.zeros_like(data)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return np.ascontiguousarray(scaled.transpose(2, 1, 0)), spacing[::-1]


def scan_nifti(data_dir: str | Path | None, labels: str | Path | None, image_size: int | None,
               site_name: str | None = None) -> Scan:
    root = require_dir(data_dir, "nifti")
    table = read_labels(labels) if labels else None
    if table is not None and table.key != "file":
        raise DataError(f"{labels}: NIfTI labels are keyed by file (columns file,label), "
                        f"not {table.key}")
    if table is not None:
        missing = [f for f in table.labels if not (root / f).is_file()]
        if missing:
            raise DataError(f"{labels} names {len(missing)} file(s) that do not exist under {root} "
                            f"(first: {missing[0]}); paths are relative to the data folder")
    scan = Scan("nifti", root, site_name=site_name)
    for path in files_under(root, SUFFIXES):
        rel = path.relative_to(root)
        try:
            volume, spacing = read_volume(path)
        except ValueError as exc:
            scan.skipped.append(Skipped(rel.as_posix(), str(exc).split(";")[0][:80]))
            continue
        except Exception as exc:  # noqa: BLE001 - a broken file is skipped and listed, never a crash
            scan.skipped.append(Skipped(rel.as_posix(), f"unreadable NIfTI ({type(exc).__name__})"))
            continue
        scan.records.append(Record(
            path=rel.as_posix(), site=site_of(rel, root, site_name),
            image=resize(volume[None], image_size or DEFAULT_SIZE_3D), native_shape=volume.shape,
            spacing=spacing, unit=rel.as_posix(),
            label=table.labels.get(rel.as_posix()) if table else None))
    return scan


def load_nifti(config: DataConfig, seed: int) -> DataSource:
    if config.labels is None:
        raise DataError("--dataset nifti needs --labels FILE.csv (columns file,label; paths relative "
                        "to --data-dir)")
    scan = scan_nifti(config.data_dir, config.labels, config.image_size, config.site_name)
    return labelled_source("nifti", "NIfTI volume", scan, config, seed)
