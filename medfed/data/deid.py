"""De-identification check for DICOM: which identifying attributes a file still carries.

The list is the DICOM basic application-level confidentiality profile (PS3.15 Annex E, table
E.1-1): the attributes it removes or blanks, by keyword. UIDs are left out on purpose: the profile
replaces them with new UIDs rather than removing them, so a de-identified file still has them and
their presence says nothing. Private tags, which the profile removes, are reported as
"private tags".

Only keywords ever leave this module: never an attribute's value, so a report, a log or an error
message cannot carry a patient's name.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sized

from pydicom.dataset import Dataset

from medfed.errors import DataError

PRIVATE = "private tags"

# PS3.15 E.1-1: attributes the basic profile removes (X), blanks (Z) or replaces with a dummy (D).
BASIC_PROFILE = frozenset({
    # patient
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "PatientBirthName",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID",
    "PatientInsurancePlanCodeSequence", "PatientPrimaryLanguageCodeSequence", "PatientReligiousPreference",
    "PatientSize", "PatientWeight", "PatientComments", "PatientState", "PatientSexNeutered",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "MedicalAlerts", "Allergies", "CountryOfResidence",
    "RegionOfResidence", "PregnancyStatus", "LastMenstrualDate", "SmokingStatus",
    "ResponsiblePerson", "ResponsibleOrganization", "PatientTransportArrangements",
    "ReferencedPatientSequence", "ReferencedPatientPhotoSequence",
    # people and places around the study
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord", "PhysiciansReadingStudyIdentificationSequence", "RequestingPhysician",
    "OperatorsName", "OperatorIdentificationSequence", "ScheduledPerformingPhysicianName",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "InstitutionCodeSequence", "StationName", "DeviceSerialNumber", "PersonName",
    "VerifyingObserverName", "ContentCreatorName", "PersonAddress", "PersonTelephoneNumbers",
    # the study, its dates and free text that often names the patient
    "AccessionNumber", "StudyID", "AdmissionID", "RequestedProcedureID", "PerformedProcedureStepID",
    "ScheduledProcedureStepID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "AcquisitionDateTime", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
    "OverlayDate", "CurveDate", "InstanceCreationDate", "StudyDescription", "SeriesDescription",
    "ImageComments", "RequestAttributesSequence", "AdmittingDiagnosesDescription",
    "DerivationDescription", "ProtocolName", "TextString", "TextComments", "InterpretationText",
    "FrameComments", "AcquisitionComments", "VisitComments", "ServiceEpisodeDescription",
})


def identifying_tags(ds: Dataset) -> set[str]:
    """Keywords of the basic-profile attributes that carry a value, anywhere in the data set
    (nested sequences included), plus PRIVATE if it has private tags. Empty values are not PHI."""
    found = set()
    for elem in ds.iterall():
        if elem.tag.is_private:
            found.add(PRIVATE)
        elif elem.keyword in BASIC_PROFILE and not _empty(elem.value):
            found.add(elem.keyword)
    return found


def _empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bytes):
        return not value.strip(b"\x00 ")
    if isinstance(value, Sized) and not isinstance(value, str):
        return len(value) == 0  # sequences and multi-valued elements
    return not str(value).strip()


def tally(found_per_file: Iterable[set[str]]) -> dict[str, int]:
    """Keyword -> number of files carrying it, most frequent first."""
    counts: Counter[str] = Counter()
    for found in found_per_file:
        counts.update(found)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def require_deidentified(counts: dict[str, int], where: str, allow_phi: bool) -> None:
    """Refuse identifying data for a federation unless the site said --allow-phi; when it did,
    say so loudly (tag names and counts, never a value)."""
    if not counts:
        return
    tags = ", ".join(f"{k} ({n} files)" for k, n in counts.items())
    if allow_phi:
        sys.stderr.write(f"medfed: WARNING: DICOM files in {where} carry identifying tags: {tags}; "
                         "used because allow_phi is set (nothing identifying leaves this site)\n")
        return
    raise DataError(f"DICOM files in {where} carry identifying tags: {tags}; de-identify them "
                    "(DICOM PS3.15 basic profile) or pass --allow-phi to use them anyway")
