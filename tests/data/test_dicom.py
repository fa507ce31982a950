"""DICOM folders: pixel values after rescale, window and MONOCHROME1 (checked by hand-computed
numbers), pydicom's own sample files, series volumes, labels, sites, and skipped files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medfed.config import DataConfig
from medfed.data.dicom import display_pixels, load_dicom, scan_dicom
from medfed.errors import DataError
from medfed.types import Task
from tests.dicom_files import PATIENT_ID, write_dicom

STORED = np.array([[0, 100], [200, 1000]], dtype=np.uint16)


def read(path: Path) -> np.ndarray:
    return display_pixels(pydicom.dcmread(path))


def test_rescale_then_window_follows_the_dicom_linear_formula(tmp_path):
    path = tmp_path / "a.dcm"
    write_dicom(path, STORED, slope=2.0, intercept=-100.0, center=100.0, width=201.0)
    # modality values: -100, 100, 300, 1900; window [c - 0.5 - (w-1)/2, ...] = [-0.5, 199.5]
    expected = np.array([[0.0, (100 - 99.5) / 200 + 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(read(path), expected, atol=1e-6)


def test_window_sees_rescaled_values_not_stored_ones(tmp_path):
    plain, rescaled = tmp_path / "plain.dcm", tmp_path / "rescaled.dcm"
    write_dicom(plain, STORED, center=500.0, width=1001.0)
    write_dicom(rescaled, STORED // 2, slope=2.0, intercept=0.0, center=500.0, width=1001.0)
    np.testing.assert_allclose(read(plain), read(rescaled), atol=1e-6)
    np.testing.assert_allclose(read(plain), [[0.0005, 0.1005], [0.2005, 1.0]], atol=1e-4)


def test_monochrome1_is_inverted(tmp_path):
    mono2, mono1 = tmp_path / "m2.dcm", tmp_path / "m1.dcm"
    write_dicom(mono2, STORED, center=500.0, width=1001.0)
    write_dicom(mono1, STORED, center=500.0, width=1001.0, photometric="MONOCHROME1")
    np.testing.assert_allclose(read(mono1), 1.0 - read(mono2), atol=1e-6)


def test_without_a_window_each_image_spans_its_own_range(tmp_path):
    path = tmp_path / "a.dcm"
    write_dicom(path, np.array([[-1000, 0], [1000, 3000]], np.int16), slope=1.0, intercept=-24.0)
    np.testing.assert_allclose(read(path), [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def pydicom_sample(name: str) -> Path:
    """One of pydicom's own test files, by path inside the installed package (no download)."""
    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        pytest.skip(f"pydicom's sample {name} is not on disk in this install ({path})")
    return path


@pytest.mark.parametrize("name,shape", [("CT_small.dcm", (128, 128)), ("MR_small.dcm", (64, 64))])
def test_pydicoms_own_samples_read_as_display_images(name, shape):
    ds = pydicom.dcmread(pydicom_sample(name))
    pixels = display_pixels(ds)
    assert pixels.shape == shape and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() < 0.25 and 0.9 < pixels.max() <= 1.0
    assert pixels.std() > 0.05


def test_mr_small_window_matches_the_formula_by_hand():
    ds = pydicom.dcmread(pydicom_sample("MR_small.dcm"))
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    values = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0))
    by_hand = np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(display_pixels(ds), by_hand, atol=1e-5)


def make_sites(root: Path, per_site: int = 6, phi: bool = False) -> Path:
    """Two sites, each a folder; labels.csv keyed by file, half positive (a bright square)."""
    rows = ["file,label"]
    rng = np.random.default_rng(0)
    for site in ("north", "south"):
        for i in range(per_site):
            label = "pneumonia" if i % 2 else "normal"
            img = rng.integers(100, 200, (12, 16)).astype(np.uint16)
            if label == "pneumonia":
                img[3:9, 4:10] += 600
            rel = f"{site}/study{i}/img{i}.dcm"
            write_dicom(root / rel, img, center=400.0, width=800.0, phi=phi,
                        patient_id=f"{PATIENT_ID}-{site}-{i}" if phi else None)
            rows.append(f"{rel},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_scan_reads_sites_labels_and_resizes(tmp_path):
    labels = make_sites(tmp_path)
    scan = scan_dicom(tmp_path, labels, image_size=8)
    assert scan.sites == ["north", "south"]
    assert len(scan.records) == 12 and not scan.skipped and not scan.phi
    record = scan.records[0]
    assert record.image.shape == (1, 8, 8) and record.native_shape == (12, 16)
    assert record.spacing == (0.7, 0.7)
    assert {r.label for r in scan.records} == {"normal", "pneumonia"}


def test_load_dicom_gives_natural_sites_and_a_stratified_held_out_test_share(tmp_path):
    labels = make_sites(tmp_path, per_site=10)
    source = load_dicom(DataConfig(dataset="dicom", data_dir=str(tmp_path), labels=str(labels),
                                   image_size=8, test_fraction=0.2), seed=0)
    assert source.task is Task.BINARY and source.class_names == ("normal", "pneumonia")
    assert source.group_names == ("north", "south")
    assert len(source.pool) + len(source.test) == 20
    # 20% of each site's 5 normal and 5 positive studies: one of each, per site
    for k in range(2):
        test_labels = source.test.y[source.test_groups == k]
        assert sorted(test_labels.tolist()) == [0, 1]
    assert source.pool.x.shape[1:] == (1, 8, 8) and source.max_value == 1.0
    again = load_dicom(DataConfig(dataset="dicom", data_dir=str(tmp_path), labels=str(labels),
                                  image_size=8, test_fraction=0.2), seed=0)
    np.testing.assert_array_equal(source.test.x, again.test.x)


def test_corrupt_and_foreign_files_are_skipped_and_listed(tmp_path):
    labels = make_sites(tmp_path)
    (tmp_path / "north" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    (tmp_path / "south" / "notes.bin").write_bytes(b"not an image at all")
    scan = scan_dicom(tmp_path, labels, image_size=8)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert set(reasons) == {"north/broken.dcm", "south/notes.bin"}
    assert reasons["south/notes.bin"] == "not a DICOM file"
    assert len(scan.records) == 12
    source = load_dicom(DataConfig(dataset="dicom", data_dir=str(tmp_path), labels=str(labels),
                                   image_size=8), seed=0)
    assert {p for p, _ in source.skipped} == set(reasons)


def test_labels_keyed_by_study_uid(tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1"
    for i in range(2):
        write_dicom(tmp_path / "s" / f"{i}.dcm", STORED, study_uid=study)
    write_dicom(tmp_path / "s" / "other.dcm", STORED)
    (tmp_path / "labels.csv").write_text(f"StudyInstanceUID,label\n{study},positive\n")
    scan = scan_dicom(tmp_path, tmp_path / "labels.csv", image_size=8)
    assert sorted(str(r.label) for r in scan.records) == ["None", "positive", "positive"]


def test_series_are_stacked_in_slice_order(tmp_path):
    series = "1.2.826.0.1.3680043.8.498.2"
    for z in (2.0, 0.0, 1.0):  # written out of order
        write_dicom(tmp_path / "s" / f"z{z}.dcm", np.full((4, 4), 100 * (z + 1), np.uint16),
                    center=150.0, width=301.0, series_uid=series, position=z)
    scan = scan_dicom(tmp_path, None, image_size=4, series_volumes=True)
    assert len(scan.records) == 1
    volume = scan.records[0].image
    assert volume.shape == (1, 4, 4, 4) and scan.records[0].native_shape == (3, 4, 4)
    means = scan_dicom(tmp_path, None, image_size=3, series_volumes=True).records[0].image[0].mean(
        axis=(1, 2))
    assert np.all(np.diff(means) > 0)  # slice z=0 (dimmest) first


def test_a_labels_file_naming_a_missing_file_is_one_clear_error(tmp_path):
    labels = make_sites(tmp_path)
    with labels.open("a") as f:
        f.write("north/nowhere.dcm,normal\n")
    with pytest.raises(DataError, match=r"1 file\(s\) that do not exist .*first: north/nowhere.dcm"):
        scan_dicom(tmp_path, labels, image_size=8)


@pytest.mark.parametrize("setup,match", [
    (lambda p: {"data_dir": str(p / "absent")}, "data folder not found"),
    (lambda p: {"data_dir": None}, "needs --data-dir"),
    (lambda p: {"labels": None}, "needs --labels"),
])
def test_bad_inputs_are_data_errors(tmp_path, setup, match):
    labels = make_sites(tmp_path)
    values = {"dataset": "dicom", "data_dir": str(tmp_path), "labels": str(labels)} | setup(tmp_path)
    with pytest.raises(DataError, match=match):
        load_dicom(DataConfig(**values), seed=0)


def test_a_folder_without_readable_images_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"nope")
    (tmp_path / "labels.csv").write_text("file,label\na/x.dcm,normal\n")
    with pytest.raises(DataError, match="no readable DICOM image"):
        load_dicom(DataConfig(dataset="dicom", data_dir=str(tmp_path),
                              labels=str(tmp_path / "labels.csv")), seed=0)


def test_pydicoms_compressed_and_colour_samples_are_read_or_skipped_with_a_reason(tmp_path):
    """Real files: RLE decodes natively (same pixels as the uncompressed one); JPEG-LS needs a
    plug-in decoder (skipped with a reason without it); a colour image is skipped."""
    import shutil

    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "SC_rgb_small_odd.dcm"):
        shutil.copy(pydicom_sample(name), tmp_path / name)
    scan = scan_dicom(tmp_path, None, image_size=64)
    images = {r.path: r.image for r in scan.records}
    reasons = {s.path: s.reason for s in scan.skipped}
    np.testing.assert_allclose(images["MR_small_RLE.dcm"], images["MR_small.dcm"], atol=1e-6)
    assert reasons["SC_rgb_small_odd.dcm"].startswith("not a greyscale image")
    jpeg_ls = "MR_small_jpeg_ls_lossless.dcm"
    assert jpeg_ls in images or reasons[jpeg_ls].startswith("cannot decode pixel data")
    assert len(images) + len(reasons) == 4


def test_a_voi_lut_sequence_is_applied_and_scaled_by_its_bit_depth(tmp_path):
    path = tmp_path / "lut.dcm"
    ds = write_dicom(path, np.array([[0, 1], [2, 3]], np.uint16))
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [4, 0, 8])  # LUTDescriptor: 4 entries from stored 0, 8 bits out
    item.add_new(0x00283006, "US", [0, 100, 200, 255])  # LUTData
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(read(path), [[0, 100 / 255], [200 / 255, 1.0]], atol=1e-6)


def test_labels_keyed_by_sop_instance_uid(tmp_path):
    a = write_dicom(tmp_path / "s" / "a.dcm", STORED)
    write_dicom(tmp_path / "s" / "b.dcm", STORED)
    (tmp_path / "labels.csv").write_text(f"SOPInstanceUID,label\n{a.SOPInstanceUID},positive\n")
    scan = scan_dicom(tmp_path, tmp_path / "labels.csv", image_size=8)
    assert {r.path: r.label for r in scan.records} == {"s/a.dcm": "positive", "s/b.dcm": None}


def test_series_volumes_labelled_by_series_uid_make_a_3d_source(tmp_path):
    rows = ["SeriesInstanceUID,label"]
    for site in ("x", "y"):
        for k in range(4):
            uid = f"1.2.826.0.1.3680043.8.498.{ord(site)}.{k}"
            for z in range(3):
                write_dicom(tmp_path / site / f"series{k}" / f"{z}.dcm",
                            np.full((6, 6), 10 * (k % 2) + z, np.uint16), series_uid=uid,
                            position=float(z))
            rows.append(f"{uid},{'lesion' if k % 2 else 'clear'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    source = load_dicom(DataConfig(dataset="dicom", data_dir=str(tmp_path), image_size=8,
                                   labels=str(tmp_path / "labels.csv"), series_volumes=True,
                                   test_fraction=0.5), seed=0)
    assert source.spatial_dims == 3 and source.pool.x.shape[1:] == (1, 8, 8, 8)
    assert len(source.pool) == len(source.test) == 4 and source.group_names == ("x", "y")
