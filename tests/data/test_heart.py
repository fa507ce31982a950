"""UCI Heart Disease: parsing ('?' and cholesterol 0 are missing), a fixed stratified split per
hospital, and imputation and scaling fitted at each site on its own training rows only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medfed.cli import main
from medfed.config import DataConfig
from medfed.data.heart import (
    CATEGORICAL,
    FEATURE_NAMES,
    FEATURES,
    HOSPITALS,
    INTEGER,
    RANGES,
    load_heart_disease,
    read_hospital,
)
from medfed.errors import ConfigError, DataError

ROW = "63,1,1,145,233,1,2,150,0,2.3,3,0,6,{num}"


def write_hospitals(root: Path, rows_per_site: int = 20, seed: int = 0,
                    overrides: dict[str, list[str]] | None = None) -> Path:
    """Four small hospital files with random values in each column's documented range (shifted
    per hospital), some '?', and a disease label per row."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k, hospital in enumerate(HOSPITALS):
        lines = []
        for i in range(rows_per_site):
            values = [_plausible(name, rng.normal(50 + 10 * k, 10), rng) for name in FEATURES]
            for name, codes in CATEGORICAL.items():
                values[FEATURES.index(name)] = str(rng.choice(codes))
            if i % 5 == 0:
                values[11] = "?"  # ca, as Hungarian and VA often lack it
            lines.append(",".join(values) + f",{i % 3}")  # num 0, 1, 2 -> disease for 2 of 3
        (root / f"processed.{hospital}.data").write_text(
            "\n".join((overrides or {}).get(hospital, lines)) + "\n")
    return root


def _plausible(name: str, value: float, rng: np.random.Generator) -> str:
    low, high = RANGES.get(name, (1, 7))  # the nominal codes are replaced by the caller
    if name in INTEGER:
        return str(int(rng.integers(low, high + 1)))
    if name == "oldpeak":
        value = value / 20 - 2  # ST depression: a few millimetres
    return f"{np.clip(value, low, high):.1f}"


def config(root: Path, **changes) -> DataConfig:
    return DataConfig(dataset="heart-disease", data_dir=str(root), sites=4, **changes)


def test_read_hospital_marks_question_marks_and_zero_cholesterol_missing(tmp_path):
    path = tmp_path / "processed.cleveland.data"
    path.write_text("63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n"
                    "41,0,2,?,0,0,2,172,0,1.4,1,?,3,3\n")
    x, y = read_hospital(path)
    assert x.shape == (2, 13) and y.tolist() == [0, 1]
    chol, trestbps, ca = (FEATURES.index(n) for n in ("chol", "trestbps", "ca"))
    assert x[0, chol] == 233 and np.isnan(x[1, chol]) and np.isnan(x[1, trestbps])
    assert np.isnan(x[1, ca]) and x[0, ca] == 0  # ca = 0 is a real count, not missing


@pytest.mark.parametrize(("text", "fragment"), [
    ("63,1,1\n", "processed.va.data:1: 3 columns, expected 14"),
    (ROW.format(num=0) + "\n" + ROW.format(num="x") + "\n", "processed.va.data:2: num is 'x'"),
    (ROW.format(num="?") + "\n", "a row has no diagnosis"),
    (ROW.format(num=0).replace(",0,6,", ",0,5,") + "\n",
     "processed.va.data:1: thal is 5; its codes are 3, 6, 7"),
])
def test_a_malformed_file_names_the_file_and_line(tmp_path, text, fragment):
    root = write_hospitals(tmp_path / "d", overrides={"va": text.splitlines()})
    with pytest.raises(DataError) as info:
        load_heart_disease(config(root), seed=0)
    assert fragment in str(info.value)


def test_a_missing_folder_or_file_says_what_is_needed(tmp_path):
    with pytest.raises(DataError, match="needs --data-dir"):
        load_heart_disease(DataConfig(dataset="heart-disease", sites=4), seed=0)
    root = write_hospitals(tmp_path / "d")
    (root / "processed.switzerland.data").unlink()
    with pytest.raises(DataError, match="lacks processed.switzerland.data"):
        load_heart_disease(config(root), seed=0)


def test_each_hospital_is_a_natural_site_with_a_fixed_stratified_test_split(tmp_path):
    root = write_hospitals(tmp_path / "d", rows_per_site=30)
    source = load_heart_disease(config(root), seed=0)
    assert source.group_names == HOSPITALS and source.pool.x.shape[1] == len(FEATURE_NAMES) == 22
    assert source.pool.x.dtype == np.float32 and not np.isnan(source.pool.x).any()
    for k in range(4):
        train_y = source.pool.y[source.groups == k]
        test_y = source.test.y[source.test_groups == k]
        assert len(train_y) + len(test_y) == 30
        assert len(test_y) == 6  # 20 % of each class: 10 healthy -> 2, 20 diseased -> 4
        assert test_y.sum() == 4
    again = load_heart_disease(config(root), seed=7)  # the run's seed does not move the split
    np.testing.assert_array_equal(source.test.x, again.test.x)


def test_scaling_is_fitted_on_a_sites_own_training_rows_only(tmp_path):
    """Changing one hospital's rows changes no other hospital's features (nothing crosses
    sites), and each site's training features have mean 0 and sd 1."""
    base = load_heart_disease(config(write_hospitals(tmp_path / "a", seed=0)), seed=0)
    other_lines = (tmp_path / "a" / "processed.va.data").read_text().splitlines()
    changed_root = write_hospitals(tmp_path / "b", seed=0,
                                   overrides={"va": ["7" + line[line.index(","):]
                                                     for line in other_lines]})
    changed = load_heart_disease(config(changed_root), seed=0)
    for k in range(3):  # cleveland, hungarian, switzerland: untouched by VA's new values
        np.testing.assert_array_equal(base.pool.x[base.groups == k], changed.pool.x[changed.groups == k])
    site = base.pool.x[base.groups == 0].astype(np.float64)
    np.testing.assert_allclose(site.mean(axis=0)[[0, 1, 2]], 0, atol=1e-6)
    np.testing.assert_allclose(site.std(axis=0)[[0, 1, 2]], 1, atol=1e-5)


def test_a_feature_a_site_never_recorded_is_its_mean_and_is_noted(tmp_path):
    rows = [ROW.format(num=i % 2).replace(",0,6,", ",?,6,") for i in range(10)]
    source = load_heart_disease(config(write_hospitals(tmp_path / "d", overrides={"va": rows})), 0)
    va = source.pool.x[source.groups == 3]
    assert np.all(va[:, FEATURE_NAMES.index("ca")] == 0)
    assert source.notes == ("va never recorded ca",)


def test_each_nominal_attribute_becomes_one_indicator_per_code_and_missing_is_none(tmp_path):
    # cp 1 / restecg 2 / slope 3 / thal 6, then cp 4 / restecg ? / slope 1 / thal 7
    rows = [ROW.format(num=i % 2) if i % 2 else "63,1,4,145,233,1,?,150,0,2.3,1,0,7,1"
            for i in range(10)]
    source = load_heart_disease(config(write_hospitals(tmp_path / "d", overrides={"va": rows})), 0)
    x = np.concatenate([source.pool.x[source.groups == 3], source.test.x[source.test_groups == 3]])
    hot = {name: x[:, FEATURE_NAMES.index(name)] for name in FEATURE_NAMES if "=" in name}
    first = x[:, FEATURE_NAMES.index("thal=6")] == 1
    assert first.sum() == 5
    assert set(np.flatnonzero(hot["cp=1"])) == set(np.flatnonzero(first))
    assert set(np.flatnonzero(hot["cp=4"])) == set(np.flatnonzero(~first))
    assert np.all(hot["restecg=2"][first] == 1)
    assert np.all([hot[f"restecg={c}"][~first] == 0 for c in CATEGORICAL["restecg"]])  # missing
    for name, codes in CATEGORICAL.items():  # at most one code per attribute, per row
        assert np.all(sum(hot[f"{name}={c}"] for c in codes) <= 1)


def test_image_harmonization_is_refused_for_tabular_features(tmp_path):
    from medfed.data.sources import load_source
    with pytest.raises(ConfigError, match="is for images"):
        load_source(config(write_hospitals(tmp_path / "d"), harmonize="zscore"), seed=0)


def test_medfed_run_on_heart_disease_scores_every_hospital(tmp_path, capsys):
    root = write_hospitals(tmp_path / "d", rows_per_site=25)
    out = tmp_path / "out"
    code = main(["run", "--dataset", "heart-disease", "--data-dir", str(root), "--sites", "4",
                 "--model", "logistic", "--rounds", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "heart-disease" and summary["partition"] == "natural"
    assert list(summary["sites"]) == list(HOSPITALS)
    assert all(site["n_test"] == 5 and "auc" in site["test"] for site in summary["sites"].values())
    assert set(summary["baselines"]["local"]) == set(HOSPITALS)


def test_the_real_four_hospitals(shared_data):
    root = shared_data / "uci_heart_disease"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    counts = {h: read_hospital(root / f"processed.{h}.data") for h in HOSPITALS}
    assert {h: len(y) for h, (_, y) in counts.items()} == {
        "cleveland": 303, "hungarian": 294, "switzerland": 123, "va": 200}
    assert {h: int(y.sum()) for h, (_, y) in counts.items()} == {
        "cleveland": 139, "hungarian": 106, "switzerland": 115, "va": 149}
    source = load_heart_disease(DataConfig(dataset="heart-disease", data_dir=str(root), sites=4), 0)
    assert len(source.pool) + len(source.test) == 920
    assert not np.isnan(source.pool.x).any() and not np.isnan(source.test.x).any()
