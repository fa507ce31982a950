"""Label CSVs and the label map from each site's names onto the federation's label set."""

from __future__ import annotations

import numpy as np
import pytest

from medfed.config import DataConfig
from medfed.data.dicom import load_dicom
from medfed.data.labels import encode_labels, load_label_map, read_labels
from medfed.errors import DataError
from tests.data.test_dicom import make_sites

MAP = """\
classes = ["normal", "pneumonia"]
[map]
"No Finding" = "normal"
[sites.south]
"PNA" = "pneumonia"
"""


def test_read_labels_by_file_and_by_uid(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\n./x/1.dcm,cat\ny/2.dcm,dog\n")
    table = read_labels(tmp_path / "a.csv")
    assert table.key == "file" and table.labels == {"x/1.dcm": "cat", "y/2.dcm": "dog"}
    (tmp_path / "b.csv").write_text("SOPInstanceUID,label,extra\n1.2.3,1,z\n")
    assert read_labels(tmp_path / "b.csv").key == "SOPInstanceUID"


@pytest.mark.parametrize("text,match", [
    ("name,label\na,1\n", "needs a 'label' column and one key column"),
    ("file,label\na,\n", "line 2: empty label"),
    ("file,label\na,1\na,2\n", "line 3: a second, different label"),
])
def test_bad_label_csvs_are_one_line_errors(tmp_path, text, match):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_labels(tmp_path / "l.csv")


def test_label_map_maps_per_site_and_refuses_unmapped_labels(tmp_path):
    (tmp_path / "map.toml").write_text(MAP)
    label_map = load_label_map(tmp_path / "map.toml")
    classes, y = encode_labels(["north", "south", "south", "north"],
                               ["No Finding", "PNA", "normal", "pneumonia"], label_map)
    assert classes == ("normal", "pneumonia") and y.tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="label 'PNA' at site north is not in the label map"):
        encode_labels(["north"], ["PNA"], label_map)


def test_a_map_onto_a_label_outside_classes_is_refused(tmp_path):
    (tmp_path / "map.toml").write_text('classes = ["a", "b"]\n[map]\nx = "c"\n')
    with pytest.raises(DataError, match="maps to 'c', which is not one of classes"):
        load_label_map(tmp_path / "map.toml")


def test_labels_found_are_sorted_numerically_when_they_are_numbers():
    classes, y = encode_labels(["s"] * 3, ["10", "2", "1"], None)
    assert classes == ("1", "2", "10") and np.array_equal(y, [2, 1, 0])
    with pytest.raises(DataError, match="only one class"):
        encode_labels(["s"], ["x"], None)


def test_dicom_sites_with_their_own_label_names_join_through_the_map(tmp_path):
    labels = make_sites(tmp_path)
    text = labels.read_text().splitlines()
    renamed = [line.replace(",pneumonia", ",PNA") if line.startswith("south") else line
               for line in text]
    labels.write_text("\n".join(renamed) + "\n")
    base = {"dataset": "dicom", "data_dir": str(tmp_path), "labels": str(labels), "image_size": 8}
    assert load_dicom(DataConfig(**base), 0).class_names == ("PNA", "normal", "pneumonia")
    (tmp_path / "map.toml").write_text(MAP)
    source = load_dicom(DataConfig(**base, label_map=str(tmp_path / "map.toml")), 0)
    assert source.class_names == ("normal", "pneumonia")
    assert np.concatenate([source.pool.y, source.test.y]).sum() == 6


def test_an_optional_patient_column_is_read_and_never_quoted(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("file,label,patient\na.png,x,P-1\nb.png,y,P-1\nc.png,x,P-2\n")
    table = read_labels(path)
    assert table.patients == {"a.png": "P-1", "b.png": "P-1", "c.png": "P-2"}
    (tmp_path / "plain.csv").write_text("file,label\na.png,x\n")
    assert read_labels(tmp_path / "plain.csv").patients == {}
    path.write_text("file,label,patient\na.png,x,SECRET-1\na.png,x,SECRET-2\n")
    with pytest.raises(DataError, match="second, different patient") as info:
        read_labels(path)
    assert "SECRET" not in str(info.value)
