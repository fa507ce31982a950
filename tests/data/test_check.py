"""The per-site data report: aggregates only, skipped files listed, identifying tags by keyword."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from medfed.config import DataConfig
from medfed.data.check import check_command, site_reports
from medfed.data.dicom import scan_dicom
from medfed.errors import ConfigError
from tests.data.test_chestxray14 import make_layout
from tests.data.test_dicom import make_sites
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, write_dicom


def test_reports_counts_prevalence_intensity_sizes_and_spacing(tmp_path):
    labels = make_sites(tmp_path)
    write_dicom(tmp_path / "south" / "extra" / "unlabelled.dcm", np.full((8, 8), 50, np.uint16),
                center=400.0, width=800.0, spacing=(0.2, 0.3))
    (tmp_path / "south" / "junk.dcm").write_bytes(b"junk")
    reports = {r.site: r for r in site_reports(scan_dicom(tmp_path, labels, 8))}
    north, south = reports["north"], reports["south"]
    assert (north.n_images, north.n_labelled, len(north.skipped)) == (6, 6, 0)
    assert (south.n_images, south.n_labelled, len(south.skipped)) == (7, 6, 1)
    assert north.labels == {"normal": 3, "pneumonia": 3} and north.prevalence["pneumonia"] == 0.5
    assert north.sizes == {"12x16": 6} and south.sizes == {"12x16": 6, "8x8": 1}
    assert south.spacing == {"min": 0.3, "median": 0.7, "max": 0.7}
    assert 0 < north.intensity["p01"] < north.intensity["mean"] < north.intensity["p99"] <= 1
    assert south.skipped[0].path == "south/junk.dcm"


def test_check_command_prints_tags_by_keyword_and_never_their_values(tmp_path):
    labels = make_sites(tmp_path, phi=True)
    (tmp_path / "north" / "broken.dcm").write_bytes(b"\0" * 200)
    out = io.StringIO()
    check_command(DataConfig(dataset="dicom", data_dir=str(tmp_path), labels=str(labels),
                             image_size=8), Console(file=out, width=200))
    text = out.getvalue()
    assert "PatientName (12)" in text and "skipped north/broken.dcm: not a DICOM file" in text
    assert PATIENT_NAME not in text and "Quixotewright" not in text and PATIENT_ID not in text


def test_chestxray14_report_counts_findings_and_no_finding(tmp_path):
    make_layout(tmp_path, patients=6)
    out = io.StringIO()
    reports = check_command(DataConfig(dataset="chestxray14", data_dir=str(tmp_path), site_by="sex"),
                            Console(file=out, width=200))
    assert {r.site for r in reports} == {"male", "female"}
    assert sum(r.labels["no finding"] for r in reports) == 6
    assert "identifying" not in out.getvalue()


def test_check_needs_a_dataset_of_files():
    with pytest.raises(ConfigError, match="reads the files a site holds"):
        check_command(DataConfig(dataset="synthetic"))


def test_the_shareable_json_has_aggregates_and_mapped_labels_but_no_file_names(tmp_path):
    import json

    labels = make_sites(tmp_path / "data")
    (tmp_path / "data" / "north" / "broken.dcm").write_bytes(b"junk")
    (tmp_path / "map.toml").write_text('classes = ["healthy", "sick"]\n'
                                       '[map]\nnormal = "healthy"\npneumonia = "sick"\n')
    out = tmp_path / "report.json"
    check_command(DataConfig(dataset="dicom", data_dir=str(tmp_path / "data"), labels=str(labels),
                             label_map=str(tmp_path / "map.toml"), image_size=8),
                  Console(file=io.StringIO()), json_path=out)
    report = json.loads(out.read_text())
    north = report["sites"]["north"]
    assert north["labels"] == {"healthy": 3, "sick": 3} and north["prevalence"]["sick"] == 0.5
    assert north["skipped"] == {"not a DICOM file": 1} and report["identifying_tags"] == {}
    assert "broken.dcm" not in out.read_text() and "study" not in out.read_text()


def test_check_with_a_label_map_refuses_an_unmapped_label(tmp_path):
    from medfed.errors import DataError

    labels = make_sites(tmp_path / "data")
    (tmp_path / "map.toml").write_text('classes = ["normal", "sick"]\n')
    with pytest.raises(DataError, match="label 'pneumonia' at site north is not in the label map"):
        check_command(DataConfig(dataset="dicom", data_dir=str(tmp_path / "data"), labels=str(labels),
                                 label_map=str(tmp_path / "map.toml"), image_size=8),
                      Console(file=io.StringIO()))
