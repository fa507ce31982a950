"""What `medfed run` writes and prints for a clinical reader: every model's operating point chosen
on validation data, beside the figures at 0.5; the verdict line (numbers and text) in summary.json,
first in the console's results and first in the report; `--target-sensitivity` checked in one line.

Hand mutations that must fail a test here: choose the best single site by test AUC; read the
operating point's rates at 0.5; forget the verdict in summary.json or the report; accept
--target-sensitivity 0."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest

from medfed.cli import main
from medfed.evaluation import statistics as st
from medfed.report.artifacts import read_predictions
from medfed.server.early_stop import validation_score


def run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tiny_config) -> list[str]:
    return tiny_config(rounds=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("clinical")
    capture = pytest.MonkeyPatch()
    stdout = tmp_path_factory.mktemp("console") / "stdout.txt"
    with stdout.open("w") as f:
        capture.setattr("sys.stdout", f)
        assert main(["run", *tiny, "--out", str(out)]) == 0
    capture.undo()
    return out, stdout.read_text()


@pytest.fixture(scope="module")
def summary(run_dir) -> dict:
    return json.loads((run_dir[0] / "summary.json").read_text())


@pytest.fixture(scope="module")
def predictions(run_dir) -> dict[str, np.ndarray]:
    labels, probs = read_predictions(run_dir[0] / "predictions.npz")
    return {"labels": labels, **probs}


def test_every_model_has_an_operating_point_read_on_the_test_set(summary, predictions):
    y = predictions["labels"]
    models = {"federated": summary["operating_point"],
              "pooled": summary["baselines"]["pooled"]["operating_point"]}
    models |= {f"local:{s}": e["operating_point"] for s, e in summary["baselines"]["local"].items()}
    for name, point in models.items():
        assert point["rule"] == "youden" and 0 <= point["threshold"] <= 1
        assert point["chosen_on"] == ("its own site's validation split" if name.startswith("local")
                                      else "the sites' validation splits")
        expected = st.rates_at(y, predictions[name][:, -1], point["threshold"])
        assert (point["sensitivity"], point["specificity"]) == pytest.approx(expected)
    assert {"sensitivity", "specificity"} <= set(summary["test"])  # the 0.5 figures stay


def test_the_verdict_compares_with_the_site_best_on_validation_by_delong(summary, predictions):
    verdict = summary["verdict"]
    local = summary["baselines"]["local"]
    best = max(local, key=lambda s: local[s]["validation_auc"])
    assert verdict["vs_best_single_site"]["site"] == best
    y, fed = predictions["labels"], predictions["federated"][:, -1]
    for key, name in (("vs_best_single_site", f"local:{best}"), ("vs_pooled", "pooled")):
        expected = st.delong_test(y, fed, predictions[name][:, -1])
        assert verdict[key]["difference"] == pytest.approx(expected.difference)
        assert verdict[key]["p_value"] == pytest.approx(expected.p_value)
    assert verdict["text"].startswith(f"FedAvg vs best single site ({best}): ")
    assert "(DeLong); vs pooled: " in verdict["text"]


def test_the_console_results_and_the_report_open_with_the_verdict(run_dir, summary):
    out, console = run_dir
    lines = [line for line in console.splitlines() if line.strip()]
    assert lines[0] == f"verdict {summary['verdict']['text']}"
    assert "thr.*" in console and "sens." in console
    page = (out / "report.html").read_text()
    first_section = page.split("<h2>")[1]
    assert first_section.startswith("Overview</h2><p class=\"verdict\">")
    assert html.escape(summary["verdict"]["text"]) in first_section
    assert "chosen on validation data (Youden" in page


def test_a_target_sensitivity_without_baselines(tiny, tmp_path, capsys):
    code, out, err = run(["run", *tiny, "--rounds", "1", "--no-baselines",
                          "--target-sensitivity", "0.9", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["operating_point"]["rule"] == "sensitivity >= 0.9"
    assert summary["verdict"]["vs_pooled"] is None
    assert "not compared with a single site or with pooling" in summary["verdict"]["text"]
    assert "validation sensitivity 0.9" in out


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "nan", "inf", "high"])
def test_a_bad_target_sensitivity_is_one_line_and_exit_2(value, tmp_path, capsys):
    code, _, err = run(["run", "--target-sensitivity", value, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--target-sensitivity" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_multiclass_run_says_it_has_no_single_threshold(medmnist_npz, tmp_path, capsys):
    path, _ = medmnist_npz("rgb", side=8, sizes=(60, 30, 20))
    code, out, err = run(["run", "--dataset", "medmnist", "--data-file", str(path), "--sites", "2",
                          "--rounds", "1", "--no-augment", "--device", "cpu",
                          "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["operating_point"]["threshold"] is None
    assert "no single threshold" in summary["operating_point"]["skipped"]
    assert "no paired test" in summary["verdict"]["text"]
    assert "no threshold" in out


def test_keep_best_reports_the_round_kept_and_it_is_the_best_validation_round(tiny_config, tmp_path):
    out = tmp_path / "out"
    assert main(["run", *tiny_config(4), "--no-baselines", "--keep-best", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    scores = {r["round"]: validation_score(r["val"]) for r in rounds}
    kept = summary["kept_round"]
    assert kept["validation_auc"] == max(s for s in scores.values() if s is not None)
    assert scores[kept["round"]] == kept["validation_auc"]
