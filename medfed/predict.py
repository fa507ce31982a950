"""`medfed predict BUNDLE INPUTS... --out preds.csv`: score images with a bundle's model and
exactly its training's preprocessing.

Each input is read by the loader's own per-file reader (DICOM: dicom.read_instance and
display_pixels; NIfTI: nifti.read_volume; PNG / JPEG: images.read_image; a MedMNIST .npz: its test
split), resized with scan.resize as the loaders resize, harmonized as model.json says, and scaled by
Preprocess: the same calls the run's own scoring makes, so the probabilities are the run's. A file
that cannot be used gets a row with the reason, never a crash.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medfed.bundle import Bundle, BundleModel
from medfed.data import dicom, images, nifti
from medfed.data.harmonize import match, site_quantiles, zscore
from medfed.data.scan import files_under, resize
from medfed.data.transforms import Preprocess
from medfed.errors import ConfigError
from medfed.types import Task

BATCH = 64


@dataclass
class Item:
    """One input: its name in the CSV, and its image (C, *spatial) in [0, 1], or why not."""

    path: str
    image: np.ndarray | None = None
    reason: str | None = None


def collect(inputs: list[Path], bundle: Bundle) -> list[Item]:
    """Every input file (folders walked in sorted order), read with its format's reader."""
    items: list[Item] = []
    for path in inputs:
        if path.is_dir():
            items += [it for f in files_under(path) for it in read_file(f, bundle)]
        elif path.is_file():
            items += read_file(path, bundle)
        else:
            items.append(Item(str(path), reason="no such file or folder"))
    return items


def read_file(path: Path, bundle: Bundle) -> list[Item]:
    """One file -> its items (a .npz gives one per test image); reasons instead of exceptions."""
    name = path.name.lower()
    try:
        if name.endswith(".npz"):
            return _npz_items(path, bundle)
        if name.endswith(nifti.SUFFIXES):
            volume, _ = nifti.read_volume(path)
            return [_fit(str(path), volume[None], bundle)]
        if name.endswith(images.SUFFIXES):
            return [_fit(str(path), images.read_image(path), bundle)]
        return [_dicom_item(path, bundle)]
    except Exception as exc:  # noqa: BLE001 - an unreadable input is listed, never a crash
        return [Item(str(path), reason=f"unreadable ({type(exc).__name__}: {exc})"[:200])]


def _dicom_item(path: Path, bundle: Bundle) -> Item:
    with warnings.catch_warnings():  # pydicom's warnings can quote identifying values
        warnings.simplefilter("ignore")
        ds, reason = dicom.read_instance(path)
        if ds is None:
            return Item(str(path), reason=reason)
        pixels = dicom.display_pixels(ds)  # (H, W), or (F, H, W) for a multi-frame instance
    return _fit(str(path), pixels[None], bundle)


def _fit(path: str, image: np.ndarray, bundle: Bundle) -> Item:
    """(C, *spatial) in [0, 1] -> the bundle's channels and size (scan.resize, as the loaders)."""
    schema = bundle.schema
    if image.ndim - 1 != schema.spatial_dims:
        return Item(path, reason=f"{image.ndim - 1}D image; the model takes {schema.spatial_dims}D")
    if image.shape[0] != schema.channels:
        if {image.shape[0], schema.channels} != {1, 3}:
            return Item(path, reason=f"{image.shape[0]} channels; the model takes {schema.channels}")
        image = images._to_channels(image, schema.channels)  # the images loader's conversion
    return Item(path, resize(image, schema.image_size) if schema.image_size else image)


def _npz_items(path: Path, bundle: Bundle) -> list[Item]:
    """A MedMNIST-format file's test split, scaled as its loader scales it (not resized: the
    MedMNIST loader leaves that to Preprocess)."""
    with np.load(path, allow_pickle=False) as npz:
        if "test_images" not in npz.files:
            return [Item(str(path), reason="no test_images array (a MedMNIST .npz has one)")]
        x = npz["test_images"]
    if x.ndim == 4 and x.shape[-1] == 3 and bundle.schema.spatial_dims == 2:
        x = np.moveaxis(x, -1, 1)  # RGB (N, H, W, 3) -> (N, 3, H, W)
    else:
        x = x[:, None]
    max_value = 255.0 if x.dtype == np.uint8 else float(x.max() or 1)
    scaled = np.clip(x.astype(np.float32) / np.float32(max_value), 0, 1)
    out = []
    for i, image in enumerate(scaled):
        item = _fit(f"{path}#test[{i}]", image, bundle)
        if item.image is not None:
            item.image = image  # same channels and dims: keep the stored size, as the loader does
        out.append(item)
    return out


def harmonized(bundle: Bundle, batch: np.ndarray) -> np.ndarray:
    """The readable inputs harmonized as one site of their own (model.json's rule)."""
    method = bundle.schema.harmonize
    if method == "zscore":
        return zscore(batch, float(batch.mean()), float(batch.std()))
    if method == "histogram":
        if bundle.harmonize_reference is None:
            raise ConfigError(f"{bundle.folder}/model.json has histogram harmonization but no "
                              "reference")
        return match(batch, site_quantiles(batch), bundle.harmonize_reference)
    return batch


@torch.no_grad()
def score(bundle: Bundle, items: list[Item]) -> np.ndarray:
    """Probabilities (N, classes) of the readable items, in their order."""
    ready = [it.image for it in items if it.image is not None]
    if not ready:
        return np.zeros((0, len(bundle.schema.classes)), np.float32)
    model = BundleModel(bundle.networks(), bundle.schema.kind).eval()
    preprocess = Preprocess(1.0, bundle.schema.spatial_size or None)
    out = []
    for shape in sorted({x.shape for x in ready}):  # npz images keep their stored size
        rows = [k for k, x in enumerate(ready) if x.shape == shape]
        batch = harmonized(bundle, np.stack([ready[k] for k in rows]))
        for start in range(0, len(rows), BATCH):
            out.append((rows[start:start + BATCH], model(preprocess(batch[start:start + BATCH]))))
    probs = np.zeros((len(ready), len(bundle.schema.classes)), np.float32)
    for rows, p in out:
        probs[rows] = p.numpy()
    return probs


def decision(bundle: Bundle, p: np.ndarray) -> str:
    """Binary: the positive (last) class if p >= the operating point; multi-class: the argmax;
    multi-label: the findings at p >= the threshold (0.5)."""
    classes, kind = bundle.schema.classes, bundle.schema.kind
    threshold = bundle.threshold if bundle.threshold is not None else 0.5
    if kind is Task.BINARY:
        return classes[1] if p[1] >= threshold else classes[0]
    if kind is Task.MULTILABEL:
        return ";".join(c for c, v in zip(classes, p, strict=True) if v >= threshold)
    return classes[int(np.argmax(p))]


def predict(bundle: Bundle, inputs: list[Path], out: Path) -> tuple[int, int]:
    """Write the CSV (path, p_<class>..., decision, error); returns (scored, unreadable)."""
    items = collect(inputs, bundle)
    probs = iter(score(bundle, items))
    classes = bundle.schema.classes
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"p_{c}" for c in classes), "decision", "error"])
        for item in items:
            if item.image is None:
                writer.writerow([item.path, *([""] * len(classes)), "", item.reason])
                continue
            p = next(probs)
            writer.writerow([item.path, *(f"{v:.8g}" for v in p), decision(bundle, p), ""])
    failed = sum(it.image is None for it in items)
    return len(items) - failed, failed
