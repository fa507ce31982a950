"""NIfTI volumes: a round trip through nibabel, orientation, spacing, sites, skipped files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfed.config import DataConfig
from medfed.data.nifti import load_nifti, read_volume, scan_nifti
from medfed.errors import DataError
from medfed.types import Task


def write_nifti(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*spacing, 1.0])), path)


def test_round_trip_keeps_values_orientation_and_spacing(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (x, y, z) as NIfTI stores it
    write_nifti(tmp_path / "v.nii.gz", data, spacing=(0.5, 0.8, 2.5))
    volume, spacing = read_volume(tmp_path / "v.nii.gz")
    assert volume.shape == (6, 5, 4) and spacing == pytest.approx((2.5, 0.8, 0.5))  # (z, y, x)
    low, high = np.percentile(data, (0.5, 99.5))
    expected = np.clip((data - low) / (high - low), 0, 1).transpose(2, 1, 0)
    np.testing.assert_allclose(volume, expected, atol=1e-6)


def make_volumes(root: Path, per_site: int = 5) -> Path:
    rng = np.random.default_rng(1)
    rows = ["file,label"]
    for site in ("a", "b"):
        for i in range(per_site):
            label = i % 2
            data = rng.normal(0, 1, (6, 6, 6)) + 4 * label * (np.indices((6, 6, 6)).sum(0) > 9)
            write_nifti(root / site / f"case{i}.nii", data)
            rows.append(f"{site}/case{i}.nii,{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_load_gives_3d_samples_sites_and_a_held_out_share(tmp_path):
    labels = make_volumes(tmp_path)
    (tmp_path / "b" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    config = DataConfig(dataset="nifti", data_dir=str(tmp_path), labels=str(labels), image_size=8,
                        test_fraction=0.4)
    source = load_nifti(config, seed=0)
    assert source.task is Task.BINARY and source.class_names == ("0", "1")
    assert source.pool.x.shape[1:] == (1, 8, 8, 8) and source.spatial_dims == 3
    assert source.group_names == ("a", "b") and len(source.pool) + len(source.test) == 10
    assert [p for p, _ in source.skipped] == ["b/broken.nii.gz"]


def test_nifti_labels_must_be_keyed_by_file(tmp_path):
    make_volumes(tmp_path)
    (tmp_path / "uid.csv").write_text("StudyInstanceUID,label\n1.2.3,1\n")
    with pytest.raises(DataError, match="keyed by file"):
        scan_nifti(tmp_path, tmp_path / "uid.csv", 8)


def test_a_2d_image_is_skipped_with_its_shape(tmp_path):
    path = tmp_path / "s" / "flat.nii"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), path)
    scan = scan_nifti(tmp_path, None, 8)
    assert not scan.records and scan.skipped[0].reason == "not a 3D volume (shape (4, 4))"
