"""DICOM files written by tests with pydicom: with or without identifying tags, any photometric
interpretation, rescale and window. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PATIENT_NAME = "Quixotewright^Philomena"  # a name no code path may ever print
PATIENT_ID = "MRN-90210-77"


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                slope: float | None = None, intercept: float | None = None,
                center: float | None = None, width: float | None = None, phi: bool = False,
                study_uid: str | None = None, series_uid: str | None = None,
                position: float | None = None, spacing: tuple[float, float] = (0.7, 0.7)) -> Dataset:
    """Write a single-frame greyscale image (uint16, or int16 for negative values)."""
    pixels = np.asarray(pixels)
    signed = pixels.dtype.kind == "i"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CT" if signed else "CR"
    ds.PatientName, ds.PatientID = (PATIENT_NAME, PATIENT_ID) if phi else ("", "")
    if phi:
        ds.PatientBirthDate = "19610704"
        ds.InstitutionName = "St Elsewhere General"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(signed)
    ds.PixelSpacing = list(spacing)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0.0, "US"
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if position is not None:
        ds.ImagePositionPatient = [0.0, 0.0, position]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
