"""Labels that live beside image files: a CSV of labels, and a label map onto the federation's set.

The CSV has a `label` column and one key column: `file` (a path relative to the data folder),
`SOPInstanceUID`, `SeriesInstanceUID` or `StudyInstanceUID`. An optional `patient` column names
what must stay on one side of every split (a patient's images); loaders that know the patient
from the file itself (DICOM's PatientID) use that. The label map is TOML:

    classes = ["normal", "pneumonia"]     # the federation's label set, in class-index order
    [map]                                 # every site's names for them
    "No Finding" = "normal"
    [sites.hospital-b]                    # one site's own names (override [map])
    "PNA" = "pneumonia"

A label that is already one of `classes` maps to itself; any other unmapped label is an error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfed.config_file import read_toml
from medfed.errors import DataError

KEY_COLUMNS = ("file", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
PATIENT_COLUMN = "patient"


@dataclass(frozen=True)
class LabelTable:
    key: str  # the column that names an image: one of KEY_COLUMNS
    labels: dict[str, str]  # key value -> label name
    patients: dict[str, str] = field(default_factory=dict)  # key value -> patient, if a column


def read_labels(path: str | Path) -> LabelTable:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = rows and list(rows[0]) or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    key = next((k for k in KEY_COLUMNS if k in header), None)
    if key is None or "label" not in header:
        raise DataError(f"{path} needs a 'label' column and one key column of "
                        f"{', '.join(KEY_COLUMNS)}; got columns {', '.join(map(str, header)) or 'none'}")
    labels: dict[str, str] = {}
    patients: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        name, label = (row.get(key) or "").strip(), (row.get("label") or "").strip()
        if not name or not label:
            raise DataError(f"{path} line {line}: empty {key if not name else 'label'}")
        if key == "file":
            name = Path(name).as_posix()
        if labels.get(name, label) != label:
            raise DataError(f"{path} line {line}: a second, different label for the same {key}")
        labels[name] = label
        if PATIENT_COLUMN in header:
            _add_patient(patients, name, (row.get(PATIENT_COLUMN) or "").strip(), path, line)
    return LabelTable(key, labels, patients)


def _add_patient(patients: dict[str, str], name: str, patient: str, path: Path, line: int) -> None:
    """The value is only compared: it may identify a person, so no message quotes it."""
    if not patient:
        raise DataError(f"{path} line {line}: empty {PATIENT_COLUMN}; give every row its patient "
                        "or leave the column out")
    if patients.get(name, patient) != patient:
        raise DataError(f"{path} line {line}: a second, different {PATIENT_COLUMN} for the same image")
    patients[name] = patient


@dataclass(frozen=True)
class LabelMap:
    classes: tuple[str, ...]
    common: dict[str, str] = field(default_factory=dict)
    sites: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str = "label map"

    def apply(self, site: str, name: str) -> str:
        mapped = self.sites.get(site, {}).get(name) or self.common.get(name)
        if mapped is None and name in self.classes:
            mapped = name
        if mapped is None:
            raise DataError(f"label '{name}' at site {site} is not in the label map {self.source}; "
                            f"map it to one of: {', '.join(self.classes)}")
        return mapped


def load_label_map(path: str | Path) -> LabelMap:
    path = Path(path)
    raw = read_toml(path, what="label map", error=DataError)
    unknown = set(raw) - {"classes", "map", "sites"}
    if unknown:
        raise DataError(f"{path}: unknown key '{sorted(unknown)[0]}'; valid: classes, map, sites")
    classes = raw.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{path} needs classes = [...] with at least two label names")
    common = _table(raw.get("map", {}), path, "[map]")
    sites = {s: _table(t, path, f"[sites.{s}]") for s, t in _dict(raw.get("sites", {}), path).items()}
    for where, table in [("[map]", common), *((f"[sites.{s}]", t) for s, t in sites.items())]:
        bad = sorted(set(table.values()) - set(classes))
        if bad:
            raise DataError(f"{path} {where} maps to '{bad[0]}', which is not one of classes "
                            f"({', '.join(classes)})")
    return LabelMap(tuple(classes), common, sites, str(path))


def _dict(value: object, path: Path) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{path}: [sites] must hold one table per site")
    return value


def _table(value: object, path: Path, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DataError(f"{path} {where} must map label names to label names (strings)")
    return dict(value)


def encode_labels(sites: list[str], names: list[str], label_map: LabelMap | None
                  ) -> tuple[tuple[str, ...], np.ndarray]:
    """Label names (one per image, with the image's site) -> (class names, int64 class indices).

    With a label map, its classes in its order; without, the names found, sorted (numerically when
    they are all integers)."""
    if label_map is not None:
        names = [label_map.apply(s, n) for s, n in zip(sites, names, strict=True)]
        classes = label_map.classes
    else:
        found = set(names)
        _refuse_case_variants(found)
        numeric = all(n.lstrip("-").isdigit() for n in found)
        classes = tuple(sorted(found, key=int if numeric else str))
        if len(classes) < 2:
            raise DataError(f"the labels name only one class ({', '.join(classes) or 'none'}); "
                            "a classifier needs at least two")
    index = {c: k for k, c in enumerate(classes)}
    return classes, np.array([index[n] for n in names], dtype=np.int64)


def case_variants(found: set[str]) -> tuple[str, str] | None:
    """Two label names that differ only in case ('Opacity', 'opacity'), if any."""
    seen: dict[str, str] = {}
    for name in sorted(found):
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            return other, name
    return None


def _refuse_case_variants(found: set[str]) -> None:
    """'Opacity' and 'opacity' are one class misspelt, not two: never a silent extra class."""
    pair = case_variants(found)
    if pair is not None:
        raise DataError(f"labels '{pair[0]}' and '{pair[1]}' differ only in case; write them "
                        "alike, or map both with a label map (--label-map) if they are one class")
