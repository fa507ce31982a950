"""`medfed run --algorithm split` end to end on the tiny synthetic sites, and every bad split
setting refused with one line and exit status 2 (nothing written)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import assert_one_line_error, run_cli


def test_split_run_writes_test_auc_and_bytes(tmp_path, tiny_config, capsys):
    out = tmp_path / "split"
    code, _, err = run_cli(["run", *tiny_config(1), "--algorithm", "split", "--cut", "2,1",
                            "--no-baselines", "--out", str(out)], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "split"
    assert 0.0 <= summary["test"]["auc"] <= 1.0
    # every batch's activations and gradients besides the site parts: far more than the model
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert summary["bytes_up"] >= sum(r["bytes_up"] for r in rounds) > 0  # + final site scores
    model_bytes = (out / "model.safetensors").stat().st_size
    assert summary["bytes_up"] > 10 * model_bytes and summary["bytes_down"] > 10 * model_bytes

@pytest.mark.parametrize("args,fragment", [
    (["--algorithm", "split", "--cut", "2"], "--cut takes two positive integers H,T"),
    (["--algorithm", "split", "--cut", "0,1"], "--cut takes two positive integers H,T"),
    (["--algorithm", "split", "--cut", "a,b"], "--cut takes two positive integers H,T"),
    (["--algorithm", "split", "--cut", "6,4"], "cnn has 10 blocks, so H + T must be at most 9"),
    (["--algorithm", "split", "--model", "resnet18"], "ordered list of blocks: cnn or mlp"),
    (["--cut", "3,1"], "cut applies to --algorithm split"),
    (["--algorithm", "split", "--attack", "sign-flip"], "does not combine with attack"),
    (["--algorithm", "split", "--dp-sgd", "--noise-multiplier", "1"],
     "does not combine with privacy"),
])
def test_a_bad_split_setting_is_one_line(capsys, tmp_path, args, fragment):
    code, _, err = run_cli(["run", *args, "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()
