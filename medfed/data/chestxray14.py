"""The NIH ChestX-ray14 layout (Wang et al., CVPR 2017): Data_Entry_2017.csv and the PNG images.

The data folder holds Data_Entry_2017.csv and the images anywhere below it (the NIH archives
unpack to images_001/images/ ... images_012/images/; any subset will do). Targets: the 14 findings
as multi-label (a sigmoid each); "No Finding" is all zeros. Splits are by patient: every image of a
patient is on one side of the test split and of each site's validation split, and a patient
belongs to one pseudo-site, chosen from their first image (lowest follow-up number): the view
position (PA / AP), the sex (M / F) or an age band (--site-by). Images listed but absent, and
images that cannot be read, are skipped and listed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from medfed.config import DataConfig
from medfed.data.dataset import DataSource
from medfed.data.scan import DEFAULT_SIZE_2D, Record, Scan, Skipped, build_source, require_dir, resize
from medfed.errors import DataError
from medfed.types import Task

ENTRY_FILE = "Data_Entry_2017.csv"
NO_FINDING = "No Finding"
FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
            "Hernia")
CLASS_NAMES = tuple(f.lower().replace("_", "-") for f in FINDINGS)
AGE_BANDS = ((0, 40, "age-0-39"), (40, 60, "age-40-59"), (60, 10**6, "age-60+"))
COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
           "Patient Gender", "View Position")


def findings_of(text: str, where: str) -> tuple[str, ...]:
    """'Effusion|Mass' -> ('Effusion', 'Mass'); 'No Finding' -> ()."""
    names = tuple(n.strip() for n in text.split("|") if n.strip())
    if names == (NO_FINDING,):
        return ()
    unknown = [n for n in names if n not in FINDINGS]
    if unknown or not names:
        raise DataError(f"{where}: unknown finding '{unknown[0] if unknown else text}'; valid: "
                        f"{', '.join(FINDINGS)} or '{NO_FINDING}'")
    return names


def site_name(row: dict[str, str], site_by: str) -> str:
    if site_by == "view":
        return row["View Position"].strip().upper() or "unknown-view"
    if site_by == "sex":
        return {"M": "male", "F": "female"}.get(row["Patient Gender"].strip().upper(), "unknown-sex")
    age = int("".join(c for c in row["Patient Age"] if c.isdigit()) or -1)
    return next((name for low, high, name in AGE_BANDS if low <= age < high), "unknown-age")


def read_entries(root: Path) -> list[dict[str, str]]:
    path = root / ENTRY_FILE
    if not path.is_file():
        raise DataError(f"{ENTRY_FILE} not found in {root}; it comes with the NIH ChestX-ray14 images")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise DataError(f"{path} is not the ChestX-ray14 table: missing columns "
                        f"{', '.join(missing or COLUMNS)}")
    return rows


def scan_chestxray14(data_dir: str | Path | None, site_by: str, image_size: int | None) -> Scan:
    root = require_dir(data_dir, "chestxray14")
    rows = read_entries(root)
    images = {p.name: p for p in root.rglob("*.png")}
    sites = _patient_sites(rows, site_by)
    scan = Scan("chestxray14", root)
    for line, row in enumerate(rows, start=2):
        name = row["Image Index"].strip()
        findings = findings_of(row["Finding Labels"], f"{ENTRY_FILE} line {line}")
        path = images.get(name)
        if path is None:
            scan.skipped.append(Skipped(name, f"listed in {ENTRY_FILE} but not found"))
            continue
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001 - a broken file is skipped and listed, never a crash
            scan.skipped.append(Skipped(path.relative_to(root).as_posix(),
                                        f"unreadable image ({type(exc).__name__})"))
            continue
        patient = row["Patient ID"].strip()
        scan.records.append(Record(
            path=path.relative_to(root).as_posix(), site=sites[patient],
            image=resize(pixels[None], image_size or DEFAULT_SIZE_2D), native_shape=pixels.shape,
            spacing=_spacing(row), unit=patient, label=findings))
    return scan


def _patient_sites(rows: list[dict[str, str]], site_by: str) -> dict[str, str]:
    """Each patient's pseudo-site, from their first image (lowest follow-up number)."""
    first: dict[str, tuple[int, dict[str, str]]] = {}
    for row in rows:
        patient, follow_up = row["Patient ID"].strip(), int(row["Follow-up #"] or 0)
        if patient not in first or follow_up < first[patient][0]:
            first[patient] = (follow_up, row)
    return {patient: site_name(row, site_by) for patient, (_, row) in first.items()}


def _spacing(row: dict[str, str]) -> tuple[float, ...] | None:
    values = [row.get("OriginalImagePixelSpacing[x"), row.get("y]")]
    try:
        return tuple(float(v) for v in values if v)[::-1] or None
    except ValueError:
        return None


def load_chestxray14(config: DataConfig, seed: int) -> DataSource:
    scan = scan_chestxray14(config.data_dir, config.site_by, config.image_size)
    y = np.array([[f in r.label for f in FINDINGS] for r in scan.records], np.float32).reshape(-1, 14)
    return build_source("chestxray14", Task.MULTILABEL, CLASS_NAMES, scan.records, y,
                        config.test_fraction, seed, scan.skipped)
