"""DICOM folders (pydicom): instances or series, display-ready intensities, labels from a CSV.

Per instance: the modality LUT (rescale slope and intercept, or a modality LUT sequence) gives
stored values their physical meaning (Hounsfield units for CT); the VOI LUT (window centre and
width, or a VOI LUT sequence) selects the displayed range, mapped to [0, 1]; MONOCHROME1 images
(bright = low values) are inverted, so bright means dense everywhere. Without a window, each image
spans its own range. Then every image is resized to the common size (--image-size, default 64;
32 for series volumes).

Each top-level subfolder of the data folder is one site (--partition natural), or, with
site_name, the whole folder is that one site. A patient (PatientID, else the study) stays on one
side of every split; the PatientID is only compared, never printed, logged or stored. Files that cannot be used are skipped and listed with the reason, never a
crash; identifying tags are counted by keyword (deid.py) and refused unless --allow-phi.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medfed.config import DataConfig
from medfed.data import deid
from medfed.data.dataset import DataSource
from medfed.data.labels import LabelTable, read_labels
from medfed.data.scan import (
    DEFAULT_SIZE_2D,
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

GREY = ("MONOCHROME1", "MONOCHROME2")


def display_pixels(ds: Dataset) -> np.ndarray:
    """Stored pixels -> float32 in [0, 1]: modality LUT, VOI LUT (window), MONOCHROME1 inversion.

    (H, W) for one frame, (F, H, W) for a multi-frame instance."""
    modality = apply_modality_lut(ds.pixel_array, ds)  # integers unless rescaled
    values = modality.astype(np.float64)
    if "VOILUTSequence" in ds:  # a lookup table indexes stored integers
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi_lut(modality, ds) / (2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # The window's output range is that of the stored values after the modality LUT: its
        # images of -inf and +inf (pydicom clips to it) map to 0 and 1.
        low, high = apply_voi_lut(np.array([-1e300, 1e300]), ds)
        out = (apply_voi_lut(values, ds) - low) / (high - low)
    else:
        low, high = values.min(), values.max()
        out = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(out, 0, 1).astype(np.float32)


def read_instance(path: Path) -> tuple[Dataset | None, str | None]:
    """(the data set, None) or (None, why it cannot be used). Reasons quote no identifying value."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as exc:  # noqa: BLE001 - any broken file is skipped and listed, never a crash
        return None, f"unreadable DICOM ({type(exc).__name__})"
    if "PixelData" not in ds:
        return None, "no pixel data"
    if ds.get("PhotometricInterpretation") not in GREY:
        return None, f"not a greyscale image ({ds.get('PhotometricInterpretation', 'no photometric')})"
    return ds, None


def scan_dicom(data_dir: str | Path | None, labels: str | Path | None, image_size: int | None,
               series_volumes: bool = False, site_name: str | None = None) -> Scan:
    """Read every DICOM file below data_dir: images, sites, labels, skipped files, identifying tags."""
    root = require_dir(data_dir, "dicom")
    table = read_labels(labels) if labels else None
    if table is not None and table.key == "file":
        _check_files_exist(table, root, Path(labels))
    with warnings.catch_warnings():
        # pydicom's warnings can quote an element's value (a malformed birth date, a name): they
        # must not reach a console or log. What is wrong with a file goes to the skipped list.
        warnings.simplefilter("ignore")
        return _scan(Scan("dicom", root, site_name=site_name), table, image_size, series_volumes)


def _scan(scan: Scan, table: LabelTable | None, image_size: int | None, series_volumes: bool
          ) -> Scan:
    root = scan.data_dir
    found_phi, instances = [], []
    for path in files_under(root):
        rel = path.relative_to(root)
        ds, reason = read_instance(path)
        if ds is None:
            scan.skipped.append(Skipped(rel.as_posix(), reason))
            continue
        found_phi.append(deid.identifying_tags(ds))
        if series_volumes:  # a series needs all its slices; an instance is done with at once
            instances.append((rel, ds))
        else:
            _add_instance(scan, rel, ds, table, image_size or DEFAULT_SIZE_2D)
    scan.phi = deid.tally(found_phi)
    if series_volumes:
        _add_series(scan, instances, table, image_size or DEFAULT_SIZE_3D)
    return scan


def _add_instance(scan: Scan, rel: Path, ds: Dataset, table: LabelTable | None, size: int) -> None:
    try:
        pixels = display_pixels(ds)
    except Exception as exc:  # noqa: BLE001 - e.g. a compressed transfer syntax without its decoder
        scan.skipped.append(Skipped(rel.as_posix(), f"cannot decode pixel data ({type(exc).__name__})"))
        return
    if pixels.ndim != 2:
        scan.skipped.append(Skipped(rel.as_posix(), f"multi-frame ({pixels.shape[0]} frames); "
                                                    "use series_volumes for 3D"))
        return
    scan.records.append(Record(
        path=rel.as_posix(), site=site_of(rel, scan.data_dir, scan.site_name), image=resize(pixels[None], size),
        native_shape=pixels.shape, spacing=_spacing(ds), unit=split_unit(ds, rel),
        label=_label(table, rel, ds)))


def _add_series(scan: Scan, instances: list[tuple[Path, Dataset]], table: LabelTable | None,
                size: int) -> None:
    """One volume per SeriesInstanceUID, slices ordered along the slice normal."""
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for rel, ds in instances:
        series[str(ds.get("SeriesInstanceUID", rel))].append((rel, ds))
    for members in series.values():
        members.sort(key=lambda m: _slice_position(m[1]))
        rel, first = members[0]
        try:
            slices = [display_pixels(ds) for _, ds in members]
            volume = np.concatenate([s[None] if s.ndim == 2 else s for s in slices])
        except Exception as exc:  # noqa: BLE001 - undecodable or slices of different sizes
            for r, _ in members:
                scan.skipped.append(Skipped(r.as_posix(), f"series unusable ({type(exc).__name__})"))
            continue
        spacing = _spacing(first)
        thickness = first.get("SliceThickness")
        scan.records.append(Record(
            path=rel.as_posix(), site=site_of(rel, scan.data_dir, scan.site_name), image=resize(volume[None], size),
            native_shape=volume.shape,
            spacing=(float(thickness), *spacing) if spacing and thickness else spacing,
            unit=split_unit(first, rel), label=_label(table, rel, first)))


def split_unit(ds: Dataset, rel: Path) -> str:
    """What stays on one side of every split: the patient (PatientID) when the file names one,
    else its study, else the file. Two studies of one patient never straddle train and test."""
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        return f"patient:{patient}"
    return f"study:{ds.get('StudyInstanceUID', rel.as_posix())}"


def _slice_position(ds: Dataset) -> float:
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if position is not None and orientation is not None:
        normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
        return float(np.dot(normal, np.array(position, float)))
    return float(ds.get("InstanceNumber", 0) or 0)


def _spacing(ds: Dataset) -> tuple[float, ...] | None:
    value = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return tuple(float(v) for v in value) if value else None


def _label(table: LabelTable | None, rel: Path, ds: Dataset) -> str | None:
    if table is None:
        return None
    key = rel.as_posix() if table.key == "file" else str(ds.get(table.key, ""))
    return table.labels.get(key)


def _check_files_exist(table: LabelTable, root: Path, labels: Path) -> None:
    missing = [f for f in table.labels if not (root / f).is_file()]
    if missing:
        raise DataError(f"{labels} names {len(missing)} file(s) that do not exist under {root} "
                        f"(first: {missing[0]}); paths are relative to the data folder")


def load_dicom(config: DataConfig, seed: int) -> DataSource:
    if config.labels is None:
        raise DataError("--dataset dicom needs --labels FILE.csv (columns file,label; paths "
                        "relative to --data-dir)")
    scan = scan_dicom(config.data_dir, config.labels, config.image_size, config.series_volumes,
                      config.site_name)
    deid.require_deidentified(scan.phi, str(scan.data_dir), config.allow_phi)
    return labelled_source("dicom", "DICOM image", scan, config, seed)
