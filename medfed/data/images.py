"""A plain folder of PNG / JPEG images (Pillow) with a CSV of labels: what a site exports when it
has no DICOM, or what a public set ships as.

The CSV has columns file,label and, optionally, patient (labels.py): file is a path relative to
the data folder; patient is what stays on one side of every split (default: the file itself).
Each top-level subfolder of the data folder is one site (with site_name, the whole folder is that
one site), as for DICOM and NIfTI (scan.py).

Intensities: 8-bit images are divided by 255; 16-bit greyscale PNGs (often 10-12 bits of a 16-bit
range) span their own range, as a DICOM without a window does. Greyscale images give 1 channel,
colour images 3 (RGB; alpha and palettes are converted). A folder that mixes both is converted to
the majority (ties: RGB, which loses nothing), and the source's notes say how many images were
converted. Every image is resized to the common size (--image-size, default 64). A file Pillow
cannot read is skipped and listed with the reason, never a crash.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medfed.config import DataConfig
from medfed.data.dataset import DataSource
from medfed.data.labels import LabelTable, read_labels
from medfed.data.scan import (
    DEFAULT_SIZE_2D,
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

SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "F"})  # more than 8 bits per pixel
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's convert("L")


def read_image(path: Path) -> np.ndarray:
    """(C, H, W) float32 in [0, 1]: C = 1 for greyscale, 3 for colour. Raises on a bad file."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # a camera's rotation flag, applied
        if image.mode in WIDE_MODES:
            values = np.asarray(image, dtype=np.float32)
            low, high = float(values.min()), float(values.max())
            pixels = (values - low) / (high - low) if high > low else np.zeros_like(values)
            return pixels[None]
        if image.mode in GREY_MODES:
            return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None]
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return np.ascontiguousarray(np.moveaxis(rgb, -1, 0))


def scan_images(data_dir: str | Path | None, labels: str | Path | None, image_size: int | None,
                site_name: str | None = None) -> Scan:
    """Every PNG / JPEG below data_dir with its site, label and patient; unreadable files listed."""
    root = require_dir(data_dir, "images")
    table = _file_table(labels, root) if labels else None
    scan = Scan("images", root, site_name=site_name)
    size = image_size or DEFAULT_SIZE_2D
    for path in files_under(root, SUFFIXES):
        rel = path.relative_to(root).as_posix()
        try:
            pixels = read_image(path)
        except Exception as exc:  # noqa: BLE001 - a broken file is skipped and listed, never a crash
            scan.skipped.append(Skipped(rel, f"unreadable image ({type(exc).__name__})"))
            continue
        scan.records.append(Record(
            path=rel, site=site_of(Path(rel), root, site_name), image=resize(pixels, size),
            native_shape=pixels.shape[1:], spacing=None,
            unit=(table.patients.get(rel, rel) if table else rel),
            label=table.labels.get(rel) if table else None))
    return scan


def _file_table(labels: str | Path, root: Path) -> LabelTable:
    table = read_labels(labels)
    if table.key != "file":
        raise DataError(f"{labels}: image labels are keyed by file (columns file,label[,patient]), "
                        f"not {table.key}")
    missing = [f for f in table.labels if not (root / f).is_file()]
    if missing:
        raise DataError(f"{labels} names {len(missing)} file(s) that do not exist under {root} "
                        f"(first: {missing[0]}); paths are relative to the data folder")
    return table


def common_channels(records: list[Record]) -> tuple[list[Record], str | None]:
    """Records with one channel count, the majority's (ties: 3); and a note when any changed."""
    counts = Counter(r.image.shape[0] for r in records)
    if len(counts) < 2:
        return records, None
    channels = 3 if counts[3] >= counts[1] else 1
    changed = sum(n for c, n in counts.items() if c != channels)
    out = [r if r.image.shape[0] == channels else replace(r, image=_to_channels(r.image, channels))
           for r in records]
    kind = "colour (RGB)" if channels == 3 else "greyscale"
    return out, (f"{changed} of {len(records)} images were converted to {kind}, the mode of most "
                 "images")


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3:
        return np.repeat(image, 3, axis=0)
    return np.tensordot(LUMA, image, axes=1)[None].astype(np.float32)


def load_images(config: DataConfig, seed: int) -> DataSource:
    if config.labels is None:
        raise DataError("--dataset images needs --labels FILE.csv (columns file,label and "
                        "optionally patient; paths relative to --data-dir)")
    scan = scan_images(config.data_dir, config.labels, config.image_size, config.site_name)
    scan.records, note = common_channels(scan.records)
    source = labelled_source("images", "PNG or JPEG image", scan, config, seed)
    return replace(source, notes=(*source.notes, note)) if note else source
