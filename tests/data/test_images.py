"""A plain folder of PNG / JPEG images with labels.csv (file,label[,patient]): channels, [0, 1]
intensities, the common size, patients kept whole, unreadable files skipped and listed."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfed.config import DataConfig
from medfed.data.federation import build_federation
from medfed.data.images import load_images, read_image, scan_images
from medfed.data.sources import load_source
from medfed.errors import DataError


def write_image(path: Path, mode: str = "L", size: tuple[int, int] = (20, 30), value: int = 0,
                fmt: str | None = None) -> None:
    """A noisy image (so every file's pixels differ) with a bright square when value > 0."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    grey = rng.integers(0, 100, size[::-1]).astype(np.uint8)
    grey[2:8, 2:8] += np.uint8(value)
    array = grey if mode == "L" else np.stack([grey, grey // 2, 255 - grey], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, format=fmt)


def write_folder(root: Path, sites=("east", "west"), per_site: int = 12, mode: str = "L",
                 patients: bool = False, suffix: str = ".png") -> Path:
    rows = ["file,label" + (",patient" if patients else "")]
    for site in sites:
        for i in range(per_site):
            label = "effusion" if i % 2 else "normal"
            rel = f"{site}/img{i}{suffix}"
            write_image(root / rel, mode, value=120 if i % 2 else 0)
            rows.append(f"{rel},{label}" + (f",{site}-p{i // 2}" if patients else ""))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def config(root: Path, labels: Path, **changes) -> DataConfig:
    return DataConfig(**{"dataset": "images", "data_dir": str(root), "labels": str(labels),
                         "image_size": 16, **changes})


def test_greyscale_pngs_become_one_channel_in_unit_range_at_the_common_size(tmp_path):
    labels = write_folder(tmp_path)
    source = load_source(config(tmp_path, labels), seed=0)
    assert source.name == "images" and source.class_names == ("effusion", "normal")
    assert source.group_names == ("east", "west")
    assert source.pool.x.shape[1:] == (1, 16, 16) and source.pool.x.dtype == np.float32
    assert 0 <= source.pool.x.min() and source.pool.x.max() <= 1 and source.max_value == 1.0
    assert len(source.pool) + len(source.test) == 24 and len(source.test) > 0


def test_rgb_jpegs_become_three_channels(tmp_path):
    labels = write_folder(tmp_path, mode="RGB", suffix=".jpg")
    source = load_images(config(tmp_path, labels), seed=0)
    assert source.pool.x.shape[1:] == (3, 16, 16)
    assert source.notes == ()


def test_read_image_scales_8_and_16_bit(tmp_path):
    eight = np.full((30, 20), 51, np.uint8)
    eight[0, 0] = 255
    Image.fromarray(eight).save(tmp_path / "a.png")
    grey = read_image(tmp_path / "a.png")
    assert grey.shape == (1, 30, 20) and grey.max() == 1 and grey.min() == pytest.approx(0.2)
    wide = np.arange(600, dtype=np.uint16).reshape(20, 30) * 4  # 12-bit values in 16 bits
    Image.fromarray(wide).save(tmp_path / "b.png")
    pixels = read_image(tmp_path / "b.png")
    assert pixels.shape == (1, 20, 30) and pixels.min() == 0 and pixels.max() == 1


def test_a_mixed_folder_is_converted_to_the_majority_mode_and_noted(tmp_path):
    labels = write_folder(tmp_path)
    write_image(tmp_path / "east" / "img0.png", "RGB")  # one colour image among 24
    source = load_images(config(tmp_path, labels), seed=0)
    assert source.pool.x.shape[1] == 1
    assert source.notes == ("1 of 24 images were converted to greyscale, the mode of most images",)


def test_unreadable_files_are_skipped_with_a_reason(tmp_path):
    labels = write_folder(tmp_path)
    (tmp_path / "west" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "west" / "notes.txt").write_text("ignored: not an image suffix")
    source = load_images(config(tmp_path, labels), seed=0)
    assert source.skipped == (("west/broken.png", "unreadable image (UnidentifiedImageError)"),)
    assert len(source.pool) + len(source.test) == 24


def test_the_patient_column_keeps_a_patients_images_on_one_side(tmp_path):
    labels = write_folder(tmp_path, per_site=20, patients=True)
    cfg = config(tmp_path, labels, val_fraction=0.3)
    source = load_images(cfg, seed=0)
    side = {}
    for data in build_federation(source, cfg, 0).sites.values():
        for part in ("train", "val", "test"):
            for x in getattr(data, part).x:
                side[x.tobytes()] = part
    scan = scan_images(tmp_path, labels, 16)
    by_patient: dict[str, set[str]] = {}
    for record in scan.records:
        by_patient.setdefault(record.unit, set()).add(side[record.image.tobytes()])
    assert len(by_patient) == 20 and all(len(s) == 1 for s in by_patient.values())
    assert {p for s in by_patient.values() for p in s} == {"train", "val", "test"}


def test_without_a_patient_column_each_file_is_its_own_unit(tmp_path):
    labels = write_folder(tmp_path)
    assert {r.unit for r in scan_images(tmp_path, labels, 16).records} == {
        f"{s}/img{i}.png" for s in ("east", "west") for i in range(12)}


def test_a_site_folder_is_one_site_named_by_site_name(tmp_path):
    labels = write_folder(tmp_path / "all")
    own = tmp_path / "all" / "east"
    (own / "labels.csv").write_text("file,label\n" + "".join(
        f"img{i}.png,{'effusion' if i % 2 else 'normal'}\n" for i in range(12)))
    source = load_images(config(own, own / "labels.csv", site_name="east"), seed=0)
    assert source.group_names == ("east",)
    assert labels.is_file()


@pytest.mark.parametrize(("csv", "fragment"), [
    ("SOPInstanceUID,label\n1.2.3,normal\n", "keyed by file"),
    ("file,label\nnowhere.png,normal\n", "do not exist"),
    ("file,label,patient\neast/img0.png,normal,\n", "empty patient"),
])
def test_bad_labels_are_one_clear_error(tmp_path, csv, fragment):
    write_folder(tmp_path)
    (tmp_path / "bad.csv").write_text(csv)
    with pytest.raises(DataError, match=fragment):
        load_images(config(tmp_path, tmp_path / "bad.csv"), seed=0)


def test_labels_are_required(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(DataError, match="--dataset images needs --labels"):
        load_images(DataConfig(dataset="images", data_dir=str(tmp_path)), seed=0)


def test_data_check_reports_an_image_folder_per_site(tmp_path, capsys):
    from medfed.cli import main

    labels = write_folder(tmp_path)
    (tmp_path / "west" / "broken.png").write_bytes(b"not a png")
    assert main(["data", "check", "--dataset", "images", "--data-dir", str(tmp_path),
                 "--labels", str(labels), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "east" in out and "west" in out and "west/broken.png" in out
