"""The CLI over data a site holds: `medfed run --dataset dicom ...` end to end over three scanner
sites (harmonization off and on), the PHI refusal and the proof that no identifier leaks with
--allow-phi, `medfed data check`, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from medfed.config_file import load_config
from tests.data.test_dicom_sites import scanner_folder
from tests.dicom_files import PATIENT_ID, PATIENT_NAME
from tests.test_cli import assert_one_line_error, run_cli, strict_json

FAST = ["--image-size", "16", "--rounds", "2", "--sites", "3", "--partition", "natural",
        "--batch-size", "16", "--device", "cpu", "--no-baselines"]
PHI_VALUES = (PATIENT_NAME, "Quixotewright", PATIENT_ID, "19610704", "St Elsewhere")


@pytest.fixture(scope="module")
def scanners(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scanners")
    labels = scanner_folder(root)
    (root / "scanner-b" / "corrupt.dcm").write_bytes(b"\0" * 132)  # skipped, counted, never a crash
    return root, labels


@pytest.fixture(scope="module")
def phi_scanners(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("phi")
    return root, scanner_folder(root, n=45, phi=True)


def dicom_args(folder: tuple[Path, Path]) -> list[str]:
    return ["--dataset", "dicom", "--data-dir", str(folder[0]), "--labels", str(folder[1])]


@pytest.mark.parametrize("method", ["none", "zscore", "histogram"])
def test_run_over_three_scanner_sites(scanners, tmp_path, capsys, method):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *dicom_args(scanners), *FAST, "--harmonize", method,
                            "--out", str(out)], capsys)
    assert code == 0, err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["dataset"] == "dicom" and summary["partition"] == "natural"
    assert list(summary["sites"]) == ["scanner-a", "scanner-b", "scanner-c"]
    assert summary["skipped_files"] == 1 and "skipped 1 unreadable or missing files" in err
    assert summary["n_test"] == sum(s["n_test"] for s in summary["sites"].values()) > 0
    assert 0 <= summary["test"]["auc"] <= 1
    assert f'harmonize = "{method}"' in (out / "config.toml").read_text()


def test_identifying_tags_stop_a_run_with_one_line_naming_them(phi_scanners, tmp_path, capsys):
    code, _, err = run_cli(["run", *dicom_args(phi_scanners), *FAST, "--out", str(tmp_path / "o")],
                           capsys)
    line = assert_one_line_error(code, err, "PatientName (45 files)", "PatientID (45 files)",
                                 "PatientBirthDate", "InstitutionName", "--allow-phi")
    assert not any(v in line for v in PHI_VALUES)
    assert not (tmp_path / "o").exists()


def test_with_allow_phi_no_identifier_reaches_any_output(phi_scanners, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["run", *dicom_args(phi_scanners), *FAST, "--allow-phi",
                                    "--out", str(out)], capsys)
    assert code == 0, stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {"summary.json", "config.toml", "rounds.jsonl", "model.safetensors"} <= {
        p.name for p in written}
    for value in PHI_VALUES:
        for path in written:
            assert value.encode() not in path.read_bytes(), f"{value!r} leaked into {path.name}"
        assert value not in stdout and value not in stderr


def test_data_check_prints_a_report_per_site(scanners, capsys):
    code, out, err = run_cli(["data", "check", *dicom_args(scanners), "--image-size", "16"], capsys)
    assert code == 0, err
    for site in ("scanner-a", "scanner-b", "scanner-c"):
        assert site in out
    assert "no identifying tags" in out and "skipped scanner-b/corrupt.dcm: not a DICOM file" in out


@pytest.mark.parametrize("args,fragments", [
    (["--harmonize", "histo"], ("unknown harmonize 'histo'", "did you mean 'histogram'")),
    (["--site-by", "ward"], ("unknown site_by 'ward'", "view, sex, age")),
    (["--test-fraction", "1.5"], ("test_fraction must be between 0 and 1",)),
])
def test_bad_data_options_are_one_line_errors(scanners, capsys, args, fragments):
    code, _, err = run_cli(["run", *dicom_args(scanners), *args], capsys)
    assert_one_line_error(code, err, *fragments)


def test_data_mistakes_are_one_line_errors(scanners, tmp_path, capsys):
    root, labels = scanners
    cases = [
        (["--dataset", "dicom", "--data-dir", str(tmp_path / "nowhere"), "--labels", str(labels)],
         "data folder not found"),
        (["--dataset", "dicom", "--data-dir", str(root), "--labels", str(tmp_path / "no.csv")],
         "labels file not found"),
        (["--dataset", "dicom", "--data-dir", str(root)], "needs --labels"),
    ]
    missing = tmp_path / "missing.csv"
    missing.write_text(labels.read_text() + "scanner-a/ghost.dcm,normal\n")
    cases.append((["--dataset", "dicom", "--data-dir", str(root), "--labels", str(missing)],
                  "do not exist"))
    label_map = tmp_path / "map.toml"
    label_map.write_text('classes = ["healthy", "sick"]\n[map]\nnormal = "healthy"\n')
    cases.append((dicom_args(scanners) + ["--label-map", str(label_map)],
                  "label 'opacity' at site scanner-a is not in the label map"))
    for args, fragment in cases:
        code, _, err = run_cli(["run", *args, *FAST, "--out", str(tmp_path / "o")], capsys)
        assert_one_line_error(code, err, fragment)
    code, _, err = run_cli(["data", "check", "--dataset", "dicom", "--data-dir",
                            str(tmp_path / "nowhere")], capsys)
    assert_one_line_error(code, err, "data folder not found")
    code, _, err = run_cli(["data", "check", "--dataset", "synthetic"], capsys)
    assert_one_line_error(code, err, "reads the files a site holds")


def test_summary_is_strict_json_with_data_keys(scanners, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *dicom_args(scanners), *FAST, "--out", str(out)], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == ["normal", "opacity"]  # the finding is the positive class
    data = load_config(out / "config.toml").data  # the resolved config reruns the same data
    assert (data.dataset, data.data_dir, data.labels) == ("dicom", str(scanners[0]), str(scanners[1]))
    assert (data.harmonize, data.test_fraction, data.allow_phi) == ("none", 0.2, False)


def test_run_over_nifti_volumes_trains_a_3d_model(tmp_path, capsys):
    from tests.data.test_nifti import make_volumes

    labels = make_volumes(tmp_path / "data", per_site=8)
    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--dataset", "nifti", "--data-dir", str(tmp_path / "data"),
                            "--labels", str(labels), *FAST, "--sites", "2", "--image-size", "8",
                            "--out", str(out)], capsys)
    assert code == 0, err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["dataset"] == "nifti" and list(summary["sites"]) == ["a", "b"]
    with safe_open(out / "model.safetensors", "np") as f:
        spec = json.loads(f.metadata()["medfed"])["spec"]
    assert spec["spatial_dims"] == 3 and spec["input_size"] == [8, 8, 8]


def test_run_over_the_chestxray14_layout_is_multi_label_by_pseudo_site(tmp_path, capsys):
    from tests.data.test_chestxray14 import make_layout

    make_layout(tmp_path / "nih")
    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--dataset", "chestxray14", "--data-dir", str(tmp_path / "nih"),
                            "--site-by", "sex", *FAST, "--sites", "2", "--harmonize", "zscore",
                            "--out", str(out)], capsys)
    assert code == 0, err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["task"] == "multi-label" and len(summary["class_names"]) == 14
    assert sorted(summary["sites"]) == ["female", "male"]
    assert summary["n_test"] % 3 == 0  # whole patients (three images each) are held out


# --- a natural partition counts its sites from the data -----------------------------------------

NO_SITES = ["--rounds", "1", "--batch-size", "16", "--device", "cpu", "--no-baselines"]


def test_heart_disease_without_sites_runs_on_its_four_hospitals(tmp_path, capsys):
    from tests.data.test_heart import write_hospitals

    root = write_hospitals(tmp_path / "d", rows_per_site=20)
    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--dataset", "heart-disease", "--data-dir", str(root),
                            "--model", "logistic", *NO_SITES, "--out", str(out)], capsys)
    assert code == 0, err
    summary = strict_json((out / "summary.json").read_text())
    assert list(summary["sites"]) == ["cleveland", "hungarian", "switzerland", "va"]
    assert load_config(out / "config.toml").data.sites == 4  # the count the data gave


def test_a_dicom_folder_without_sites_runs_on_its_subfolders(scanners, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *dicom_args(scanners), "--image-size", "16", *NO_SITES,
                            "--out", str(out)], capsys)
    assert code == 0, err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["partition"] == "natural"
    assert list(summary["sites"]) == ["scanner-a", "scanner-b", "scanner-c"]


def test_an_explicit_sites_that_disagrees_with_the_data_is_one_line_error(scanners, tmp_path,
                                                                         capsys):
    code, _, err = run_cli(["run", *dicom_args(scanners), "--image-size", "16", *NO_SITES,
                            "--sites", "5", "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "the data has 3 natural sites but --sites is 5")
    assert not (tmp_path / "o").exists()


def test_a_check_that_needs_the_site_count_runs_once_the_data_gives_it(scanners, tmp_path, capsys):
    """krum with byzantine 1 needs 5 sites; the three scanners are too few, said after loading."""
    code, _, err = run_cli(["run", *dicom_args(scanners), "--image-size", "16", *NO_SITES,
                            "--aggregator", "krum", "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "needs >= 5 sites (got 3)")
