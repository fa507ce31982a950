"""A site's splits are a function of (seed, its name, its own files) only: loaded alone (as a
deployed site loads its folder) it gets the same train / validation / test rows as inside the
whole federation (--partition natural); splits are stratified by label and keep a patient whole.

Hand mutations that must fail a test here: draw every site's holdout from one rng in site order
(scan.holdout); share one rng among the sites' train/val splits (federation.build_federation);
key heart-disease's test rows by hospital index; drop the strata from train_val_split; use the
StudyInstanceUID instead of the PatientID as the DICOM split unit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfed.config import DataConfig
from medfed.data import partition
from medfed.data.dataset import DataSource, Samples, SiteData
from medfed.data.dicom import load_dicom
from medfed.data.federation import build_federation, site_split
from medfed.data.heart import HOSPITALS, load_heart_disease
from medfed.data.scan import holdout
from medfed.errors import DataError
from medfed.types import Task
from tests.data.test_heart import write_hospitals
from tests.dicom_files import write_dicom

SITES = ("north", "south", "west")


def write_patients(root: Path, patients_per_site: int = 10, studies: int = 2) -> Path:
    """Three site folders; each patient has `studies` studies of one image, all with the
    patient's label; labels.csv keyed by file."""
    rows = ["file,label"]
    rng = np.random.default_rng(1)
    for site in SITES:
        for p in range(patients_per_site):
            label = "pneumonia" if p % 3 == 0 else "normal"
            for s in range(studies):
                rel = f"{site}/p{p}/study{s}.dcm"
                image = rng.integers(0, 400, (8, 8)).astype(np.uint16)
                write_dicom(root / rel, image, patient_id=f"{site}-patient-{p}")
                rows.append(f"{rel},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def whole_federation(config: DataConfig, load, seed: int = 3) -> dict[str, SiteData]:
    return build_federation(load(config, seed), config, seed).sites


def alone(config: DataConfig, load, name: str, seed: int = 3) -> SiteData:
    """What a deployed site does: load its own data as one site, split all of it."""
    source = load(config, seed)
    assert source.group_names == (name,)
    return site_split(source, name, np.arange(len(source.pool)), config.val_fraction, seed,
                      np.arange(len(source.test)))


def assert_same(a: SiteData, b: SiteData) -> None:
    for part in ("train", "val", "test"):
        x, y = getattr(a, part), getattr(b, part)
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.y, y.y)


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("patients")
    return root, write_patients(root)


def dicom_config(root: Path, labels: Path, **changes) -> DataConfig:
    """allow_phi: any PatientID counts as identifying (deid.py), pseudonymous or not."""
    return DataConfig(dataset="dicom", data_dir=str(root), labels=str(labels), image_size=8,
                      val_fraction=0.25, allow_phi=True, **changes)


@pytest.mark.parametrize("name", SITES)
def test_a_dicom_site_alone_splits_as_within_the_federation(dicom_folder, name):
    root, labels = dicom_folder
    together = whole_federation(dicom_config(root, labels), load_dicom)
    own = alone(dicom_config(root / name, labels_for(root, labels, name), site_name=name),
                load_dicom, name)
    assert_same(own, together[name])
    assert len(own.val) > 0 and len(own.test) > 0


def labels_for(root: Path, labels: Path, site: str) -> Path:
    """The site's own labels.csv: its rows, paths relative to its own folder."""
    lines = labels.read_text().splitlines()
    mine = [line.removeprefix(f"{site}/") for line in lines[1:] if line.startswith(f"{site}/")]
    path = root / f"labels-{site}.csv"
    path.write_text("\n".join([lines[0], *mine]) + "\n")
    return path


def test_two_studies_of_one_patient_never_straddle_a_split(dicom_folder):
    """Each image is unique noise, so its pixels say where it went; a patient's two studies
    (two StudyInstanceUIDs, one PatientID) land in the same site split, train, val or test."""
    root, labels = dicom_folder
    config = dicom_config(root, labels)
    source = load_dicom(config, 3)
    where = {}
    for data in build_federation(source, config, 3).sites.values():
        for part in ("train", "val", "test"):
            for x in getattr(data, part).x:
                where[x.tobytes()] = part
    assert set(where.values()) == {"train", "val", "test"}
    for site in SITES:
        for p in range(10):
            sides = {where[_pixels(root / site / f"p{p}" / f"study{s}.dcm")] for s in range(2)}
            assert len(sides) == 1, f"{site} patient {p} straddles {sides}"


def _pixels(path: Path) -> bytes:
    import pydicom

    from medfed.data.dicom import display_pixels
    from medfed.data.scan import resize

    return resize(display_pixels(pydicom.dcmread(path))[None], 8).tobytes()


def heart_config(**changes) -> DataConfig:
    return DataConfig(dataset="heart-disease", val_fraction=0.2, **changes)


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_a_hospital_alone_splits_as_within_the_four(tmp_path, hospital):
    root = write_hospitals(tmp_path / "d", rows_per_site=30)
    together = whole_federation(heart_config(data_dir=str(root)), load_heart_disease)
    own = alone(heart_config(data_file=str(root / f"processed.{hospital}.data")),
                load_heart_disease, hospital)
    assert_same(own, together[hospital])


def test_a_hospital_file_takes_its_name_from_site_name_or_its_file_name(tmp_path):
    root = write_hospitals(tmp_path / "d")
    path = root / "processed.va.data"
    assert load_heart_disease(heart_config(data_file=str(path)), 0).group_names == ("va",)
    named = heart_config(data_file=str(path), site_name="long-beach")
    assert load_heart_disease(named, 0).group_names == ("long-beach",)
    other = tmp_path / "va.csv"
    other.write_text(path.read_text())
    with pytest.raises(DataError, match="does not say its hospital"):
        load_heart_disease(heart_config(data_file=str(other)), 0)
    with pytest.raises(DataError, match="not both"):
        load_heart_disease(heart_config(data_file=str(path), data_dir=str(root)), 0)


def test_holdout_of_one_site_alone_equals_its_rows_among_all_sites():
    rng = np.random.default_rng(0)
    sites = np.repeat(np.array(["a", "b", "c"]), 40)
    units = np.arange(120) // 2  # two images per unit, one site per unit
    strata = np.repeat(rng.integers(0, 2, 60), 2)
    together = holdout(strata, sites, units, 0.25, seed=9)
    for name in ("a", "b", "c"):
        mine = sites == name
        own = holdout(strata[mine], sites[mine], units[mine] - units[mine].min(), 0.25, seed=9)
        np.testing.assert_array_equal(own, together[mine])
    assert not np.array_equal(together, holdout(strata, sites, units, 0.25, seed=10))


# --- stratification -----------------------------------------------------------------------------

def test_train_val_split_gives_each_class_its_share():
    labels = np.array([1] * 10 + [0] * 30)
    for seed in range(5):
        train, val = partition.train_val_split(np.arange(40), 0.2, np.random.default_rng(seed),
                                               strata=labels)
        assert len(val) == 8 and labels[val].sum() == 2  # 20 % of 10 positives, of 30 negatives
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(40))


def test_train_val_split_stratifies_patients_and_keeps_them_whole():
    units = np.arange(60) // 3  # 20 patients of 3 images; 5 positive patients
    labels = (units % 4 == 0).astype(np.int64)
    labels[units % 4 == 0] *= np.tile([1, 0, 0], 5)  # a positive patient: one positive image
    train, val = partition.train_val_split(np.arange(60), 0.2, np.random.default_rng(0), units,
                                           labels)
    assert len(set(units[val])) == 4 and len(set(units[val]) & set(units[train])) == 0
    assert sum(u % 4 == 0 for u in set(units[val])) == 1  # 20 % of 5 positive patients


def test_a_rare_class_still_leaves_both_splits_non_empty():
    labels = np.array([0, 0, 1])
    train, val = partition.train_val_split(np.arange(3), 0.01, np.random.default_rng(0),
                                           strata=labels)
    assert len(train) == 2 and len(val) == 1


def test_site_split_of_multilabel_data_stratifies_on_any_finding():
    n = 50
    y = np.zeros((n, 3), np.float32)
    y[:10, 0] = 1  # 10 with a finding, 40 with none
    y[5:10, 2] = 1
    source = DataSource("m", Task.MULTILABEL, ("a", "b", "c"),
                        Samples(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), y),
                        Samples(np.zeros((1, 1, 1, 1), np.uint8), y[:1]), 255.0)
    site = site_split(source, "site-a", np.arange(n), 0.2, seed=0)
    assert len(site.val) == 10 and int((site.val.y.sum(axis=1) > 0).sum()) == 2
    again = site_split(source, "site-a", np.arange(n), 0.2, seed=0)
    other = site_split(source, "site-b", np.arange(n), 0.2, seed=0)
    np.testing.assert_array_equal(site.val.x, again.val.x)
    assert not np.array_equal(site.val.x, other.val.x)  # each site its own stream
