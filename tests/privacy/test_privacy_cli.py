"""`medfed run` with each privacy mechanism on tiny synthetic data: flags, errors, summary.json."""

from __future__ import annotations

import json

import pytest

from medfed.cli import main
from medfed.config_file import config_from_dict
from medfed.errors import ConfigError

TINY = ["run", "--sites", "3", "--rounds", "1", "--image-size", "16", "--no-baselines",
        "--device", "cpu"]


def run(tmp_path, capsys, *flags):
    out = tmp_path / "out"  # the run's own folder (tmp_path holds the small config)
    code = main([*TINY, "--out", str(out), *flags])
    _, err = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text()) if code == 0 else None
    return code, err, summary


def small_data(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text("[data]\nsynthetic_samples = 150\nsynthetic_test = 20\n")
    return ["--config", str(config)]


def test_dp_sgd_run_prints_and_records_epsilon_per_site(tmp_path, capsys):
    code, err, summary = run(tmp_path, capsys, *small_data(tmp_path), "--dp-sgd",
                             "--noise-multiplier", "1.0", "--max-grad-norm", "0.5", "--delta", "1e-6")
    assert code == 0, err
    privacy = summary["privacy"]
    assert set(privacy["epsilon"]) == {"site-a", "site-b", "site-c"}
    assert privacy["delta"] == 1e-6 and privacy["dp_sgd"]["max_grad_norm"] == 0.5
    assert "epsilon spent per site" in err
    first_round = json.loads((tmp_path / "out" / "rounds.jsonl").read_text().splitlines()[0])
    assert first_round["epsilon"] == privacy["epsilon"]


def test_dp_sgd_trains_with_the_dp_friendly_recipe_and_flags_override_it(tmp_path, capsys):
    code, err, summary = run(tmp_path, capsys, *small_data(tmp_path), "--dp-sgd",
                             "--target-epsilon", "8", "--logical-batch", "24",
                             "--augment-multiplicity", "2", "--augment")  # small images: augmentation is off unless asked
    assert code == 0, err
    dp = summary["privacy"]["dp_sgd"]
    assert dp["recipe"] == {"logical_batch": 24, "physical_batch": 256, "augment_multiplicity": 2,
                            "ema_decay": 0.0, "optimizer": "adam", "lr": 0.002, "momentum": 0.9}
    sizes = {s: v["n_train"] for s, v in summary["sites"].items()}
    assert dp["sample_rate"] == {s: 24 / n for s, n in sizes.items()}  # q of the logical batch


def test_client_dp_and_secure_aggregation_together(tmp_path, capsys):
    code, err, summary = run(tmp_path, capsys, *small_data(tmp_path), "--client-dp", "--clip", "0.5",
                             "--noise", "1.2", "--secure-aggregation", "--threshold", "2")
    assert code == 0, err
    privacy = summary["privacy"]
    assert privacy["client_dp"]["clip"] == 0.5 and privacy["client_dp"]["noise_multiplier"] == 1.2
    assert privacy["client_dp"]["rounds"] == 1 and privacy["client_dp"]["epsilon"] > 0
    assert privacy["secure_aggregation"]["threshold"] == 2
    assert "federation's epsilon" in err and "only masked updates" in err


def test_all_three_mechanisms_compose(tmp_path, capsys):
    code, err, summary = run(tmp_path, capsys, *small_data(tmp_path), "--dp-sgd",
                             "--noise-multiplier", "1.0", "--client-dp", "--secure-aggregation")
    assert code == 0, err
    assert set(summary["privacy"]) >= {"epsilon", "delta", "dp_sgd", "client_dp", "secure_aggregation"}
    assert len(summary["privacy"]["epsilon"]) == 3


@pytest.mark.parametrize("flags, fragment", [
    (["--dp-sgd", "--noise-multiplier", "1", "--norm", "batch"], "use --norm group or --norm instance"),
    (["--dp-sgd"], "dp_sgd needs noise_multiplier (sigma) or target_epsilon"),
    (["--secure-aggregation", "--threshold", "4"], "threshold is 4 but there are only 3 sites"),
    (["--secure-aggregation", "--threshold", "3", "--fraction", "0.5"],
     "a round samples only 2 sites"),
    (["--secure-aggregation", "--threshold", "2", "--sites", "4"],
     "threshold is 2 but a round samples 4 sites: secure aggregation against a malicious server "
     "needs more than half of them (at least 3)"),
    (["--secure-aggregation", "--aggregator", "median"], "secure_aggregation replaces the"),
    (["--client-dp", "--algorithm", "scaffold"], "client_dp replaces the"),
    (["--client-dp", "--clip", "0"], "clip must be > 0"),
    (["--dp-sgd", "--target-epsilon", "8", "--delta", "1"], "delta must be in (0, 1)"),
    (["--dp-sgd", "--target-epsilon", "8", "--ema-decay", "1"], "ema_decay must be in [0, 1)"),
    # [training]'s step size and batch are not what a DP-SGD site trains with: never silently lost
    (["--dp-sgd", "--target-epsilon", "8", "--lr", "0.01"], "lr (--lr) is not used; set dp_lr (--dp-lr)"),
    (["--dp-sgd", "--target-epsilon", "8", "--batch-size", "64"], "set logical_batch (--logical-batch)"),
    (["--dp-sgd", "--target-epsilon", "8", "--optimizer", "sgd"], "set dp_optimizer (--dp-optimizer)"),
])
def test_a_wrong_privacy_setting_is_one_clear_line(tmp_path, capsys, flags, fragment):
    code, err, _ = run(tmp_path, capsys, *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_the_privacy_section_of_a_config_file():
    config = config_from_dict({"privacy": {"secure_aggregation": True, "threshold": 3,
                                           "dp_sgd": True, "target_epsilon": 1, "delta": 1e-6}})
    assert config.privacy.threshold == 3 and config.privacy.target_epsilon == 1.0
    with pytest.raises(ConfigError, match="unknown key in \\[privacy\\]|key in \\[privacy\\]"):
        config_from_dict({"privacy": {"epsilon": 1}})
