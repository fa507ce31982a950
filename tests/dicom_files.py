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
                position: float | None = None, spacing: tuple[float, float] = (0.7, 0.7),
                patient_id: str | None = None) -> Dataset:
    """Write a single-frame greyscale image (uint16, or int16 for negative values). patient_id
    (default: PATIENT_ID with phi, none without) is the split unit the loader keeps together."""
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
    ds.PatientName = PATIENT_NAME if phi else ""
    ds.PatientID = patient_id if patient_id is not None else PATIENT_ID if phi else ""
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


# Three "scanners": each stores the same physical signal its own way (rescale slope/intercept,
# sign, photometric interpretation) and images it through its own response (gamma, gain, offset).
# The loader undoes the storage (modality LUT, window, MONOCHROME1); harmonization is for the rest.
SCANNERS: dict[str, dict] = {
    "scanner-a": dict(slope=1.0, intercept=0.0, gamma=1.0, gain=1.0, offset=0.0,
                      photometric="MONOCHROME2"),
    "scanner-b": dict(slope=2.0, intercept=-1024.0, gamma=0.5, gain=0.7, offset=0.3,
                      photometric="MONOCHROME2"),
    "scanner-c": dict(slope=0.5, intercept=100.0, gamma=1.8, gain=1.1, offset=-0.15,
                      photometric="MONOCHROME1"),
}
FULL_SCALE = 1000.0  # physical units of white


def write_scanner_sites(root: Path, images: np.ndarray, labels: np.ndarray, sites: np.ndarray,
                        phi: bool = False) -> Path:
    """images (N, H, W) in [0, 1], labels (N,) 0/1, sites (N,) in 0..2 -> one folder per scanner
    under root and root/labels.csv (file,label). Returns the CSV's path."""
    rows = ["file,label"]
    names = list(SCANNERS)
    for i, (image, label, site) in enumerate(zip(images, labels, sites, strict=True)):
        s = SCANNERS[names[site]]
        physical = FULL_SCALE * np.clip(s["gain"] * image ** s["gamma"] + s["offset"], 0, 1)
        if s["photometric"] == "MONOCHROME1":
            physical = FULL_SCALE - physical
        stored = np.round((physical - s["intercept"]) / s["slope"]).astype(np.int16)
        rel = f"{names[site]}/study{i:04d}/image.dcm"
        write_dicom(root / rel, stored, photometric=s["photometric"], slope=s["slope"],
                    intercept=s["intercept"], center=FULL_SCALE / 2, width=FULL_SCALE + 1, phi=phi,
                    patient_id=f"{PATIENT_ID}-{i:04d}" if phi else None)
        rows.append(f"{rel},{'opacity' if label else 'normal'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"
