"""The model bundle end to end: a tiny DICOM `medfed run` writes model/, `medfed predict` on the
same DICOM files gives the run's own test probabilities, ONNX export agrees with PyTorch, and the
user's mistakes are one line with exit status 2.

Hand mutations that must fail here: predict without the loader's resize (scan.resize) or with
another intensity scale (Preprocess max value); the bundle's weights taken from the initial model;
export without the members' mean.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medfed.bundle import load_bundle
from medfed.data.dicom import scan_dicom
from medfed.report.artifacts import read_predictions
from tests.data.test_dicom_sites import scanner_folder
from tests.test_cli import assert_one_line_error, run_cli

FAST = ["--image-size", "16", "--rounds", "2", "--batch-size", "16", "--device", "cpu",
        "--no-baselines", "--no-augment"]


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(DICOM folder, labels.csv, the run's --out) of a two-round run over three scanners."""
    root = tmp_path_factory.mktemp("scanners")
    labels = scanner_folder(root)
    (root / "scanner-b" / "corrupt.dcm").write_bytes(b"\0" * 132)
    out = tmp_path_factory.mktemp("run") / "out"
    from medfed.cli import main

    assert main(["run", "--dataset", "dicom", "--data-dir", str(root), "--labels", str(labels),
                 *FAST, "--out", str(out)]) == 0
    return root, labels, out


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_bundle_holds_task_preprocessing_operating_point_and_provenance(dicom_run):
    _, _, out = dicom_run
    info = json.loads((out / "model" / "model.json").read_text())
    assert info["task"]["classes"] == ["normal", "opacity"] and info["task"]["image_size"] == 16
    assert info["preprocessing"]["resize"]["size"] == [16, 16]
    assert "VOI LUT" in info["preprocessing"]["readers"]["dicom"]
    assert info["operating_point"]["rule"] == "youden"
    assert 0 <= info["operating_point"]["threshold"] <= 1
    assert len(info["provenance"]["config_sha256"]) == 64
    assert set(info["provenance"]["data_summary"]["sites"]) == {"scanner-a", "scanner-b", "scanner-c"}
    summary = json.loads((out / "summary.json").read_text())
    assert "model/model.json" in summary["files"]


def test_predict_on_dicom_gives_the_runs_own_test_probabilities(dicom_run, tmp_path, capsys):
    root, labels, out = dicom_run
    code, _, err = run_cli(["predict", str(out / "model"), str(root), str(tmp_path / "nowhere.dcm"),
                            "--out", str(tmp_path / "preds.csv")], capsys)
    assert code == 0, err
    rows = read_csv(tmp_path / "preds.csv")
    assert rows[str(tmp_path / "nowhere.dcm")]["error"] == "no such file or folder"
    assert rows[str(root / "scanner-b" / "corrupt.dcm")]["error"] == "not a DICOM file"
    # The run's test images, found by content among the loader's records, with their files.
    by_image = {r.image.tobytes(): r.path for r in scan_dicom(root, labels, 16).records}
    test_labels, probs = read_predictions(out / "predictions.npz")
    from medfed.config_file import load_config
    from medfed.experiment import prepare

    test = prepare(load_config(out / "config.toml")).federation.source.test
    assert len(test) == len(test_labels) > 0
    threshold = load_bundle(out).threshold
    for image, expected in zip(test.x, probs["federated"], strict=True):
        row = rows[str(root / by_image[image.tobytes()])]
        got = np.array([float(row["p_normal"]), float(row["p_opacity"])])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert row["decision"] == ("opacity" if got[1] >= threshold else "normal")


def test_predict_and_export_refuse_bad_arguments_in_one_line(dicom_run, tmp_path, capsys):
    _, _, out = dicom_run
    code, _, err = run_cli(["predict", str(tmp_path), "x.dcm", "--out", str(tmp_path / "p.csv")],
                           capsys)
    assert_one_line_error(code, err, "is not a model bundle")
    code, _, err = run_cli(["predict", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_out_refuses_a_foreign_non_empty_folder_without_force(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(["run", "--rounds", "1", "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "not a medfed output", "--force")
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    import medfed

    assert code == 0 and out.strip() == f"medfed {medfed.__version__}"


HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))


@pytest.mark.skipif(not HAS_ONNX, reason="onnx and onnxruntime are not installed "
                                         "(pip install 'medfed[onnx]')")
def test_onnx_export_agrees_with_pytorch(dicom_run, tmp_path, capsys):
    _, _, out = dicom_run
    code, _, err = run_cli(["export", str(out), "--onnx", str(tmp_path / "m.onnx")], capsys)
    assert code == 0, err
    from medfed.bundle import BundleModel
    from medfed.export import max_difference

    bundle = load_bundle(out)
    model = BundleModel(bundle.networks(), bundle.schema.kind).eval()
    assert max_difference(model, tmp_path / "m.onnx", (1, 16, 16), seed=7, batch=9) < 1e-5


def test_export_without_the_extra_says_how_to_install_it(dicom_run, tmp_path, capsys, monkeypatch):
    _, _, out = dicom_run
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnx", "onnxruntime") else real(name, *a))
    code, _, err = run_cli(["export", str(out), "--onnx", str(tmp_path / "m.onnx")], capsys)
    assert_one_line_error(code, err, "pip install 'medfed[onnx]'")


def test_a_personalized_bundle_predicts_the_mean_of_its_site_models(tmp_path):
    import torch

    from medfed.bundle import BundleModel, bundle_info, model_entry, write_bundle
    from medfed.models import ModelSpec, build_model
    from medfed.task_schema import TaskSchema
    from medfed.types import Task

    schema = TaskSchema(Task.BINARY, ("normal", "finding"), 2, 1, 16)
    spec = ModelSpec(2, 1, 2, "batch", input_size=(16, 16))
    nets = [build_model("cnn", spec, seed).eval() for seed in (1, 2)]
    info = bundle_info(schema, model_entry("cnn", "batch", 16), 1.0, None,
                       {"rule": "youden", "threshold": 0.4}, {"config_sha256": None})
    write_bundle(tmp_path, {"site-a": nets[0].state_dict(), "site-b": nets[1].state_dict()}, info)
    bundle = load_bundle(tmp_path)
    assert bundle.info["prediction"]["members"] == ["site-a", "site-b"] and bundle.threshold == 0.4
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected = (nets[0](x).softmax(1) + nets[1](x).softmax(1)) / 2
        got = BundleModel(bundle.networks(), Task.BINARY).eval()(x)
    torch.testing.assert_close(got, expected)


def test_a_histogram_run_keeps_the_federations_reference(dicom_run, tmp_path, capsys):
    root, labels, _ = dicom_run
    out = tmp_path / "hist"
    code, _, err = run_cli(["run", "--dataset", "dicom", "--data-dir", str(root), "--labels",
                            str(labels), *FAST, "--harmonize", "histogram", "--out", str(out)], capsys)
    assert code == 0, err
    bundle = load_bundle(out)
    assert bundle.schema.harmonize == "histogram" and bundle.harmonize_reference.shape == (101,)
    code, _, err = run_cli(["predict", str(out), str(root / "scanner-a"), "--out",
                            str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    rows = read_csv(tmp_path / "p.csv")
    assert rows and all(r["decision"] in ("normal", "opacity") for r in rows.values())
