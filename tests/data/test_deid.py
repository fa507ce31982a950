"""The de-identification check: keywords of identifying tags, never their values."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medfed.config import DataConfig
from medfed.data import deid
from medfed.data.dicom import load_dicom
from medfed.errors import DataError
from tests.data.test_dicom import make_sites, pydicom_sample
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, write_dicom


def test_identifying_tags_are_found_by_keyword(tmp_path):
    ds = write_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16), phi=True)
    assert deid.identifying_tags(ds) == {"PatientName", "PatientID", "PatientBirthDate",
                                         "InstitutionName"}


def test_empty_type2_tags_are_not_identifying(tmp_path):
    ds = write_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16), phi=False)
    assert ds.PatientName == "" and deid.identifying_tags(ds) == set()


def test_tags_inside_sequences_and_private_tags_count(tmp_path):
    ds = write_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16))
    item = pydicom.Dataset()
    item.PatientName = "Nested^Person"
    ds.ReferencedStudySequence = [item]
    ds.add_new(0x00091001, "LO", "vendor secret")
    assert deid.identifying_tags(ds) == {"PatientName", deid.PRIVATE}


def test_pydicoms_ct_sample_carries_patient_identifiers():
    found = deid.identifying_tags(pydicom.dcmread(pydicom_sample("CT_small.dcm")))
    assert {"PatientName", "PatientID", "StudyDate", "InstitutionName"} <= found
    assert "SOPInstanceUID" not in found  # UIDs are replaced, not removed, by the basic profile


def test_the_basic_profile_names_real_dicom_keywords():
    from pydicom.datadict import keyword_dict

    assert deid.BASIC_PROFILE <= set(keyword_dict)


def test_refusal_names_tags_and_counts_but_no_value(tmp_path):
    labels = make_sites(tmp_path, phi=True)
    config = DataConfig(dataset="dicom", data_dir=str(tmp_path), labels=str(labels), image_size=8)
    with pytest.raises(DataError) as info:
        load_dicom(config, seed=0)
    message = str(info.value)
    assert "PatientName (12 files)" in message and "PatientID (12 files)" in message
    assert "--allow-phi" in message and "\n" not in message
    assert PATIENT_NAME not in message and "Quixotewright" not in message and PATIENT_ID not in message
    source = load_dicom(DataConfig(**{**config.__dict__, "allow_phi": True}), seed=0)
    assert len(source.pool) + len(source.test) == 12


def test_no_pydicom_warning_escapes_a_scan(tmp_path):
    """pydicom's reading warnings can quote an element's value; none may reach the console."""
    import warnings

    from medfed.data.dicom import scan_dicom

    ds = write_dicom(tmp_path / "s" / "a.dcm", np.zeros((4, 4), np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.OperatorsName = PATIENT_NAME + "x" * 80  # an over-long PN: pydicom warns on reading
    ds.save_as(tmp_path / "s" / "a.dcm", enforce_file_format=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = scan_dicom(tmp_path, None, 8)
    assert caught == []
    assert scan.phi == {"OperatorsName": 1} and len(scan.records) == 1
