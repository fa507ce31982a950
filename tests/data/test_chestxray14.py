"""The ChestX-ray14 layout: multi-label targets, patient-level splits, pseudo-sites, skipped files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfed.config import DataConfig
from medfed.data.chestxray14 import FINDINGS, load_chestxray14, scan_chestxray14
from medfed.data.federation import build_federation
from medfed.errors import DataError
from medfed.types import Task

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def make_layout(root: Path, patients: int = 24, per_patient: int = 3) -> dict[str, str]:
    """A tiny NIH layout: images_001/images/*.png and Data_Entry_2017.csv. Returns image -> patient."""
    rng = np.random.default_rng(7)
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    lines, owner = [HEADER], {}
    for p in range(1, patients + 1):
        age, sex = 20 + 3 * p, "MF"[p % 2]
        for f in range(per_patient):
            name = f"{p:08d}_{f:03d}.png"
            labels = ("No Finding" if (p + f) % 3 == 0 else
                      FINDINGS[p % 14] + ("|Effusion" if f == 2 else ""))
            view = "PA" if (p + f) % 2 else "AP"
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / name)
            lines.append(f"{name},{labels},{f},{p},{age:03d}Y,{sex},{view},20,20,0.143,0.143,")
            owner[name] = str(p)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return owner


def config(root: Path, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "chestxray14", "data_dir": str(root), "image_size": 8,
                         "test_fraction": 0.25, **kw})


def test_findings_are_multi_label_and_no_finding_is_all_zeros(tmp_path):
    make_layout(tmp_path)
    scan = scan_chestxray14(tmp_path, "view", 8)
    source = load_chestxray14(config(tmp_path), seed=0)
    assert source.task is Task.MULTILABEL and len(source.class_names) == 14
    y = np.concatenate([source.pool.y, source.test.y])
    by_label = {r.label for r in scan.records}
    assert () in by_label  # "No Finding"
    assert y.shape == (72, 14) and (y.sum(axis=1) == 0).sum() == 24
    record = next(r for r in scan.records if r.path.endswith("00000005_002.png"))
    assert record.label == ("Nodule", "Effusion") and record.native_shape == (20, 20)


@pytest.mark.parametrize("site_by,names", [("view", {"AP", "PA"}), ("sex", {"male", "female"}),
                                           ("age", {"age-0-39", "age-40-59", "age-60+"})])
def test_no_patient_is_in_two_splits_or_two_sites(tmp_path, site_by, names):
    owner = make_layout(tmp_path)
    scan = scan_chestxray14(tmp_path, site_by, 8)
    assert set(scan.sites) == names
    site_of_patient: dict[str, set[str]] = {}
    for r in scan.records:
        site_of_patient.setdefault(owner[Path(r.path).name], set()).add(r.site)
    assert all(len(s) == 1 for s in site_of_patient.values())

    source = load_chestxray14(config(tmp_path, site_by=site_by), seed=3)
    assert source.units is not None
    # rebuild which patient each pool / test image belongs to, patient by patient
    unit_patient = _unit_patients(scan, source)
    train_patients = {unit_patient[u] for u in source.units}
    test_images = len(source.test)
    assert test_images > 0 and len(train_patients) + test_images // 3 == 24
    fed = build_federation(source, config(tmp_path, site_by=site_by, partition="natural",
                                          sites=len(names)), 0)
    for site in fed.sites.values():
        assert len(site.val) % 3 == 0 and len(site.train) % 3 == 0  # whole patients only


def _unit_patients(scan, source) -> dict[int, str]:
    """build_source numbers units by sorted 'site/patient'; map those numbers back to patients."""
    keys = sorted({f"{r.site}/{r.unit}" for r in scan.records})
    return {k: key.split("/", 1)[1] for k, key in enumerate(keys)}


def test_test_split_is_patient_level(tmp_path):
    owner = make_layout(tmp_path)
    source = load_chestxray14(config(tmp_path), seed=1)
    scan = scan_chestxray14(tmp_path, "view", 8)
    # Identify each test image by its pixels: every patient's three images are all in or all out.
    by_pixels = {r.image.tobytes(): owner[Path(r.path).name] for r in scan.records}
    test_patients = [by_pixels[x.tobytes()] for x in source.test.x]
    pool_patients = {by_pixels[x.tobytes()] for x in source.pool.x}
    assert not set(test_patients) & pool_patients
    assert all(test_patients.count(p) == 3 for p in set(test_patients))


def test_missing_and_corrupt_images_are_skipped_and_listed(tmp_path):
    make_layout(tmp_path, patients=8)
    (tmp_path / "images_001" / "images" / "00000001_000.png").unlink()
    (tmp_path / "images_001" / "images" / "00000002_001.png").write_bytes(b"\x89PNG broken")
    scan = scan_chestxray14(tmp_path, "view", 8)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert reasons["00000001_000.png"] == "listed in Data_Entry_2017.csv but not found"
    assert reasons["images_001/images/00000002_001.png"].startswith("unreadable image")
    assert len(scan.records) == 22


def test_unknown_finding_and_missing_table_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="Data_Entry_2017.csv not found"):
        scan_chestxray14(tmp_path, "view", 8)
    make_layout(tmp_path, patients=2)
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text(table.read_text().replace("No Finding", "Broken Rib", 1))
    with pytest.raises(DataError, match="unknown finding 'Broken Rib'"):
        scan_chestxray14(tmp_path, "view", 8)
