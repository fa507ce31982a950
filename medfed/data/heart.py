"""UCI Heart Disease, four hospitals (Cleveland, Hungarian, Switzerland, VA Long Beach): a naturally
federated clinical table (Janosi et al. 1988; FLamby's Fed-Heart-Disease).

`processed.<hospital>.data`: 14 comma-separated columns, no header, `?` for a missing value. The 13
attributes are the features; the target is `num > 0` (any angiographic disease). Cholesterol 0
(Switzerland records every value so) is missing, not a measurement.

Four attributes are nominal codes, not quantities (heart-disease.names): chest pain type cp (1-4),
resting ECG restecg (0-2), ST slope (1-3) and thal (3 normal, 6 fixed defect, 7 reversible
defect). Read as numbers they would impose an order and spacing that does not exist, so each
becomes one indicator column per documented code (a missing code: all zeros), and the model sees
9 scaled numeric features and 13 indicators (FEATURE_NAMES). Pooled logistic regression on the
four hospitals reaches 0.79-0.80 mean test accuracy so, against 0.72-0.73 on the raw codes.

What crosses sites: nothing. Each hospital is one natural site; its rows are split into its own
training pool and test rows by a fixed, seeded, stratified split (the same test rows whatever the
run's --seed, so seeds vary training, not the yardstick), drawn from a stream keyed by the
hospital's name: a deployed hospital that reads only its own file (data_file) holds out the same
rows as the four-hospital simulation. Imputation (the site's median) and
scaling (the site's mean and standard deviation) are fitted at each site on its training pool
only and applied to its own test rows; a feature a site never recorded becomes 0 after scaling
(its mean) and is noted in the source's `notes`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medfed.config import DataConfig
from medfed.data.dataset import DataSource, Samples
from medfed.data.partition import site_rng
from medfed.errors import DataError
from medfed.types import Task

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
FEATURES = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
            "oldpeak", "slope", "ca", "thal")
ZERO_IS_MISSING = ("chol",)
CATEGORICAL = {"cp": (1, 2, 3, 4), "restecg": (0, 1, 2), "slope": (1, 2, 3), "thal": (3, 6, 7)}
NUMERIC = tuple(f for f in FEATURES if f not in CATEGORICAL)
FEATURE_NAMES = (*NUMERIC, *(f"{name}={code}" for name, codes in CATEGORICAL.items() for code in codes))
SPLIT_SEED = 20220101  # fixed: the test rows do not move with --seed
# The plausible range of each attribute (heart-disease.names: units and codes; the bounds are wide
# physiological limits, not the data's): a value outside is a typo or a corrupt file, refused.
# trestbps 0 occurs once in the VA file and is kept as recorded; chol 0 means missing (above).
RANGES = {"age": (1, 120), "sex": (0, 1), "trestbps": (0, 300), "chol": (0, 1000), "fbs": (0, 1),
          "thalach": (30, 250), "exang": (0, 1), "oldpeak": (-10, 10), "ca": (0, 3), "num": (0, 4)}
INTEGER = ("sex", "fbs", "exang", "ca", "num")
TEST_TAG = 0x4EA7  # a hospital's stream for its test rows
FILE_NAME = re.compile(r"processed\.(?P<hospital>[^.]+)\.data")


def read_hospital(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 13) float64 with NaN for missing, binary labels (N,) int64)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.strip().split(",")
        if len(cells) != len(FEATURES) + 1:
            raise DataError(f"{path}:{number}: {len(cells)} columns, expected {len(FEATURES) + 1} "
                            f"({', '.join(FEATURES)}, num)")
        rows.append([_value(c, name, f"{path}:{number}")
                     for c, name in zip(cells, (*FEATURES, "num"), strict=True)])
        _check_codes(rows[-1], f"{path}:{number}")
    if not rows:
        raise DataError(f"{path} holds no rows (one patient per line: {', '.join(FEATURES)}, num)")
    table = np.asarray(rows, dtype=np.float64)
    if np.isnan(table[:, -1]).any():
        raise DataError(f"{path}: a row has no diagnosis (num); every row needs one")
    features = table[:, :-1]
    for name in ZERO_IS_MISSING:
        column = features[:, FEATURES.index(name)]
        column[column == 0] = np.nan
    return features, (table[:, -1] > 0).astype(np.int64)


def _value(cell: str, name: str, where: str) -> float:
    """One cell: '?' is missing (NaN); anything else a finite number in the column's range."""
    text = cell.strip()
    if text == "?":
        return np.nan
    try:
        value = float(text)
    except ValueError:
        value = np.nan
    if not np.isfinite(value):  # also 'nan', 'inf' and an empty field
        raise DataError(f"{where}: {name} is '{text[:20]}'; write a number, or '?' when missing")
    low, high = RANGES.get(name, (-np.inf, np.inf))
    if not low <= value <= high or (name in INTEGER and value != int(value)):
        kind = "an integer " if name in INTEGER else ""
        raise DataError(f"{where}: {name} is {value:g}; heart-disease.names documents {kind}"
                        f"{low:g} to {high:g} (or '?' when missing)")
    return value


def _check_codes(row: list[float], where: str) -> None:
    """A nominal attribute outside its documented codes would silently become 'missing'."""
    for name, codes in CATEGORICAL.items():
        value = row[FEATURES.index(name)]
        if not np.isnan(value) and value not in codes:
            raise DataError(f"{where}: {name} is {value:g}; its codes are "
                            f"{', '.join(map(str, codes))} or '?'")


def stratified_test_rows(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of test rows: `fraction` of each class, at least one row of each class
    that has two or more."""
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        n = min(max(1, round(fraction * len(rows))), len(rows) - 1) if len(rows) > 1 else 0
        test[rng.choice(rows, size=n, replace=False)] = True
    return test


def fit_site_scaler(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(medians, means, sds) fitted on one site's training rows; unrecorded features get 0 / 1."""
    recorded = ~np.isnan(train).all(axis=0)
    medians = np.where(recorded, np.nanmedian(np.where(recorded, train, 0.0), axis=0), 0.0)
    filled = np.where(np.isnan(train), medians, train)
    means = np.where(recorded, filled.mean(axis=0), 0.0)
    sds = filled.std(axis=0)
    return medians, means, np.where(recorded & (sds > 0), sds, 1.0)


def apply_site_scaler(x: np.ndarray, scaler: tuple[np.ndarray, np.ndarray, np.ndarray]
                      ) -> np.ndarray:
    medians, means, sds = scaler
    return ((np.where(np.isnan(x), medians, x) - means) / sds).astype(np.float32)


def encode(x: np.ndarray, scaler: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(N, 13) raw attributes -> (N, 22) model features in FEATURE_NAMES order: the numeric ones
    imputed and scaled by the site's own scaler, each nominal one as indicators of its codes."""
    numeric = apply_site_scaler(x, scaler)[:, [FEATURES.index(f) for f in NUMERIC]]
    indicators = [(x[:, FEATURES.index(name)][:, None] == np.asarray(codes)[None, :])
                  for name, codes in CATEGORICAL.items()]
    return np.concatenate([numeric, *indicators], axis=1).astype(np.float32)


def load_heart_disease(config: DataConfig, seed: int) -> DataSource:
    """The hospitals as natural sites: all four from data_dir, or one hospital's own file
    (data_file, named by site_name or by its file name). `seed` is unused on purpose (see
    SPLIT_SEED)."""
    files = _hospital_files(config)
    pools, tests, notes = [], [], []
    for hospital, path in files.items():
        x, y = read_hospital(path)
        test = stratified_test_rows(y, config.test_fraction, site_rng(SPLIT_SEED, TEST_TAG, hospital))
        scaler = fit_site_scaler(x[~test])
        unrecorded = [f for f, r in zip(FEATURES, ~np.isnan(x[~test]).all(axis=0), strict=True)
                      if not r]
        if unrecorded:
            notes.append(f"{hospital} never recorded {', '.join(unrecorded)}")
        pools.append((encode(x[~test], scaler), y[~test]))
        tests.append((encode(x[test], scaler), y[test]))
    return DataSource(
        name="heart-disease", task=Task.BINARY, class_names=("no disease", "disease"),
        pool=_stack(pools), test=_stack(tests), max_value=1.0,
        groups=_groups(pools), test_groups=_groups(tests), group_names=tuple(files),
        notes=tuple(notes))


def _hospital_files(config: DataConfig) -> dict[str, Path]:
    """Hospital name -> its file: the four of data_dir, or data_file alone."""
    if config.data_file is not None and config.data_dir is not None:
        raise DataError("--dataset heart-disease takes --data-dir (all four hospitals) or "
                        "--data-file (one hospital's processed.<hospital>.data), not both")
    if config.data_file is None:
        root = _require_dir(config.data_dir)
        return {h: root / f"processed.{h}.data" for h in HOSPITALS}
    path = Path(config.data_file)
    if not path.is_file():
        raise DataError(f"heart-disease file not found: {path}")
    match = FILE_NAME.fullmatch(path.name)
    if config.site_name is None and match is None:
        raise DataError(f"{path.name} does not say its hospital (processed.<hospital>.data, e.g. "
                        "processed.cleveland.data); rename it or set site_name")
    return {config.site_name or match["hospital"]: path}


def _require_dir(data_dir: str | None) -> Path:
    if data_dir is None:
        raise DataError("--dataset heart-disease needs --data-dir, the folder holding "
                        "processed.cleveland.data, processed.hungarian.data, "
                        "processed.switzerland.data and processed.va.data (or --data-file, "
                        "one hospital's file)")
    root = Path(data_dir)
    missing = [h for h in HOSPITALS if not (root / f"processed.{h}.data").is_file()]
    if missing:
        raise DataError(f"{root} lacks processed.{missing[0]}.data (needs one file per hospital: "
                        f"{', '.join(HOSPITALS)}; UCI ML Repository id 45)")
    return root


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> Samples:
    return Samples(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))


def _groups(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.full(len(y), k, dtype=np.int64) for k, (_, y) in enumerate(parts)])
