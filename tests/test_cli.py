"""`medfed run`: one clear line and exit status 2 for every user mistake; the files a run leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from medfed import config as cfg
from medfed.cli import main
from medfed.config_file import load_config, with_overrides
from medfed.evaluation.metrics import METRIC_KEYS
from medfed.models import ModelSpec, build_model, norm_keys

REPO = Path(__file__).resolve().parents[1]

TINY_TOML = """\
seed = 3
device = "cpu"
[data]
sites = 3
synthetic_samples = 200
synthetic_test = 100
[federation]
rounds = 2
[training]
batch_size = 32
"""


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors leave through SystemExit
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith(("medfed: error: ", "medfed run: error: "))
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"{token} is not valid JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY_TOML, encoding="utf-8")
    return path


# --- user mistakes -----------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,valid", [
    ("--algorithm", "nope", cfg.ALGORITHMS),
    ("--model", "vgg16", cfg.MODELS),
    ("--norm", "layer", cfg.NORMS),
    ("--partition", "random", cfg.PARTITIONS),
    ("--dataset", "cifar10", cfg.DATASETS),
    ("--optimizer", "rmsprop", cfg.OPTIMIZERS),
    ("--device", "tpu", cfg.DEVICES),
    ("--aggregator", "average", cfg.AGGREGATORS),
])
def test_a_bad_choice_is_one_line_naming_every_valid_choice(capsys, tmp_path, flag, value, valid):
    code, _, err = run_cli(["run", flag, value, "--out", str(tmp_path / "out")], capsys)
    line = assert_one_line_error(code, err, f"'{value}'", "valid:")
    assert all(v in line for v in valid)
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_a_near_miss_gets_a_suggestion(capsys):
    code, _, err = run_cli(["run", "--algorithm", "fedprx"], capsys)
    assert_one_line_error(code, err, "did you mean 'fedprox'")


@pytest.mark.parametrize("flag,value", [("--rounds", "two"), ("--lr", "fast"), ("--sites", "2.5")])
def test_a_bad_number_is_one_line(capsys, flag, value):
    code, _, err = run_cli(["run", flag, value], capsys)
    assert_one_line_error(code, err, flag, f"'{value}'")


@pytest.mark.parametrize("args,fragment", [
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--alpha", "-1"], "alpha must be > 0"),
    (["--fraction", "2"], "fraction must be in (0, 1]"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--sites", "2", "--sizes", "1,2,3"], "sizes has 3 entries but sites is 2"),
])
def test_a_value_out_of_range_is_one_line(capsys, args, fragment):
    code, _, err = run_cli(["run", *args], capsys)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("args,fragment", [
    (["--aggregator", "krum", "--sites", "4"], "needs >= 5 sites (got 4)"),
    (["--aggregator", "median", "--algorithm", "swt"], "swt has no average to replace"),
    (["--attack", "scale"], "needs a factor, e.g. scale:100"),
    (["--attack", "backdoor"], "unknown attack 'backdoor'"),
    (["--attack", "nan", "--attackers", "7"], "attackers is 7 but there are only 5 sites"),
    (["--byzantine", "-2"], "byzantine must be >= 0"),
])
def test_a_bad_robustness_or_attack_setting_is_one_line(capsys, tmp_path, args, fragment):
    code, _, err = run_cli(["run", *args, "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_bad_sizes_are_one_line(capsys):
    code, _, err = run_cli(["run", "--sizes", "20,abc,15"], capsys)
    assert_one_line_error(code, err, "--sizes takes comma-separated ints", "20,abc,15")


def test_an_unknown_flag_is_one_line(capsys):
    code, _, err = run_cli(["run", "--algoritm", "fedavg"], capsys)
    assert_one_line_error(code, err, "unrecognized arguments", "--algoritm")


def test_no_command_is_one_line(capsys):
    code, _, err = run_cli([], capsys)
    assert_one_line_error(code, err, "required")


def test_a_missing_medmnist_file_says_where_to_download_it(capsys, tmp_path):
    missing = tmp_path / "pneumoniamnist.npz"
    code, _, err = run_cli(["run", "--dataset", "medmnist", "--data-file", str(missing),
                            "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "not found", str(missing), "zenodo.org")


def test_a_missing_config_file_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(["run", "--config", str(tmp_path / "nope.toml")], capsys)
    assert_one_line_error(code, err, "config file not found")


def test_an_unknown_key_in_the_config_file_is_one_line(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[federation]\nrouns = 3\n")
    code, _, err = run_cli(["run", "--config", str(path)], capsys)
    assert_one_line_error(code, err, "'rouns'", "did you mean 'rounds'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_asking_for_a_missing_gpu_is_one_line(capsys, tmp_path, tiny_toml):
    code, _, err = run_cli(["run", "--config", str(tiny_toml), "--device", "cuda",
                            "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "no CUDA GPU", "--device cpu")


def test_a_config_mistake_is_reported_before_torch_and_monai_load(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "medfed.run", None)  # importing it now raises ImportError
    code, _, err = run_cli(["run", "--algorithm", "nope"], capsys)
    assert_one_line_error(code, err, "unknown algorithm 'nope'")


def test_python_dash_m_medfed_with_a_bad_algorithm_exits_2_with_one_line(tmp_path):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "medfed", "run", "--algorithm", "nope"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown algorithm 'nope'" in lines[0] and "valid:" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()


# --- a tiny run, end to end --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tiny_toml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["run", "--config", str(tiny_toml), "--lr", "0.002", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def summary(tiny_run) -> dict:
    return strict_json((tiny_run / "summary.json").read_text())


def test_summary_has_the_design_keys(summary):
    assert summary["dataset"] == "synthetic" and summary["algorithm"] == "fedavg"
    assert summary["rounds"] == 2
    assert set(summary["sites"]) == {"site-a", "site-b", "site-c"}
    for site in summary["sites"].values():
        assert site["n_train"] > 0 and site["n_val"] > 0 and "val" in site
    assert set(METRIC_KEYS) <= set(summary["test"])
    assert summary["test"]["n"] == summary["n_test"] == 100
    assert summary["wall_seconds"] > 0
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0


def test_summary_has_pooled_and_local_baselines_with_the_same_metric_keys(summary):
    baselines = summary["baselines"]
    assert set(METRIC_KEYS) <= set(baselines["pooled"]["test"])
    assert set(baselines["local"]) == set(summary["sites"])
    for site in summary["sites"]:
        assert set(METRIC_KEYS) <= set(baselines["local"][site]["test"])
        assert baselines["local"][site]["test"]["n"] == 100


def test_the_written_config_reloads_to_the_resolved_config(tiny_run, tiny_toml):
    """What was given, the flag, and every setting chosen from the data (summary.json's
    defaults), so the file reruns the run with nothing left to choose."""
    written = load_config(tiny_run / "config.toml")
    chosen = json.loads((tiny_run / "summary.json").read_text())["defaults"]
    assert chosen  # the tiny run leaves model, norm, augmentation... to the data
    expected = with_overrides(load_config(tiny_toml),
                              {"lr": 0.002, **{k: v["value"] for k, v in chosen.items()}})
    assert written == expected
    assert written.training.lr == 0.002


def test_the_model_file_is_safetensors_with_the_models_keys(tiny_run):
    state = load_file(str(tiny_run / "model.safetensors"))
    expected = build_model("cnn", ModelSpec(2, 1, 2, norm="instance"), seed=0).state_dict()
    assert state.keys() == expected.keys()
    assert all(state[k].shape == expected[k].shape and state[k].dtype == expected[k].dtype
               for k in state)
    with safe_open(str(tiny_run / "model.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["medfed"])
    assert meta["dataset"] == "synthetic" and meta["algorithm"] == "fedavg" and meta["site"] is None
    assert meta["class_names"] == ["normal", "finding"]
    assert not (tiny_run / "models").exists()


def test_rounds_jsonl_has_one_line_per_round(tiny_run):
    lines = (tiny_run / "rounds.jsonl").read_text().splitlines()
    rounds = [strict_json(line) for line in lines]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["sites"] == ["site-a", "site-b", "site-c"] and r["failed"] == {}
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0
        assert set(r["val"]) == {"site-a", "site-b", "site-c"}


def test_the_same_seed_twice_gives_identical_results(tiny_run, summary, tiny_toml, tmp_path,
                                                     capsys):
    out = tmp_path / "again"
    code, _, _ = run_cli(["run", "--config", str(tiny_toml), "--lr", "0.002", "--no-baselines",
                          "--out", str(out)], capsys)
    assert code == 0
    again = strict_json((out / "summary.json").read_text())
    assert again["test"] == summary["test"]
    assert again["sites"] == summary["sites"]
    assert "baselines" not in again
    assert (out / "model.safetensors").read_bytes() == (tiny_run / "model.safetensors").read_bytes()
    assert (out / "rounds.jsonl").read_text().count("train_loss") == 2


@pytest.mark.parametrize("algorithm", ["fedbn", "ensemble"])
def test_personalized_algorithms_write_one_model_per_site(algorithm, tiny_toml, tmp_path, capsys):
    out = tmp_path / algorithm
    code, _, _ = run_cli(["run", "--config", str(tiny_toml), "--algorithm", algorithm,
                          "--rounds", "1", "--no-baselines", "--out", str(out)], capsys)
    assert code == 0
    sites = ["site-a", "site-b", "site-c"]
    assert sorted(p.name for p in (out / "models").iterdir()) == [f"{s}.safetensors" for s in sites]
    assert not (out / "model.safetensors").exists()
    models = {s: load_file(str(out / "models" / f"{s}.safetensors")) for s in sites}
    local = norm_keys(build_model("cnn", ModelSpec(2, 1, 2, norm="instance"), seed=0))
    a, b = models["site-a"], models["site-b"]
    assert any(not torch.equal(a[k], b[k]) for k in local)  # each site's own normalization
    shared = [k for k in a if k not in local]
    if algorithm == "fedbn":
        assert all(torch.equal(a[k], b[k]) for k in shared)  # one shared model otherwise
    else:
        assert any(not torch.equal(a[k], b[k]) for k in shared)  # nothing is shared
    summary = strict_json((out / "summary.json").read_text())
    assert summary["algorithm"] == algorithm and set(METRIC_KEYS) <= set(summary["test"])


def test_a_run_on_the_shared_pneumoniamnist(pneumoniamnist_file, tmp_path, capsys):
    out = tmp_path / "pneumonia"
    code, _, err = run_cli(["run", "--dataset", "medmnist", "--data-file", str(pneumoniamnist_file),
                            "--rounds", "1", "--no-baselines", "--sites", "2",
                            "--batch-size", "128", "--image-size", "16", "--no-augment",
                            "--device", "cpu",
                            "--out", str(out)], capsys)
    assert code == 0, err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["dataset"] == "pneumoniamnist" and summary["task"] == "binary"
    assert summary["partition"] == "iid" and summary["n_test"] == 624
    assert summary["test"]["n"] == 624
    assert all(isinstance(summary["test"][k], float) for k in METRIC_KEYS)
    assert sum(s["n_train"] + s["n_val"] for s in summary["sites"].values()) == 4708 + 524


def test_an_out_folder_that_cannot_be_made_is_one_line(capsys, tiny_toml, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["run", "--config", str(tiny_toml), "--no-baselines",
                            "--out", str(blocker / "inside")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
