"""`medfed run --homomorphic` on tiny synthetic data: the model, the bytes, the records, the
refusals, and what happens without TenSEAL."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from medfed.cli import main
from medfed.config_file import config_from_dict
from medfed.errors import ConfigError
from medfed.privacy import ckks
from tests.privacy.test_privacy_cli import run, small_data

needs_tenseal = pytest.mark.skipif(not ckks.available(), reason="homomorphic encryption needs "
                                                                 "TenSEAL: pip install 'medfed[he]'")
# One round, SGD: the kept model is then the decrypted average itself. CKKS rounds each weight by
# ~1e-7; any later training step can magnify that past a tight tolerance (a max-pool tie that
# flips), which a CI run once saw as 1.7e-5 after a second round.
SGD = ["--optimizer", "sgd", "--lr", "0.05", "--rounds", "1", "--local-epochs", "1"]


def model(tmp_path, name):
    return load_file(tmp_path / name / "model.safetensors")


@needs_tenseal
@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox"])
def test_a_homomorphic_run_gives_the_plain_model(tmp_path, capsys, algorithm):
    flags = [*small_data(tmp_path), *SGD, "--algorithm", algorithm]
    for name in ("plain", "he"):
        (tmp_path / name).mkdir()
    code, err, plain = run(tmp_path / "plain", capsys, *flags)
    assert code == 0, err
    code, err, encrypted = run(tmp_path / "he", capsys, *flags, "--homomorphic")
    assert code == 0, err
    expected, got = model(tmp_path / "plain", "out"), model(tmp_path / "he", "out")
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0)
    assert encrypted["privacy"]["homomorphic"]["encrypted_layers"] == "all"
    assert encrypted["bytes_up"] > 10 * plain["bytes_up"]  # ciphertexts: ~18x the weights
    assert "homomorphic encryption (CKKS" in err


@needs_tenseal
def test_every_round_of_a_homomorphic_run_is_recorded_as_protected(tmp_path, capsys):
    code, err, _ = run(tmp_path, capsys, *small_data(tmp_path), *SGD, "--rounds", "2",
                       "--homomorphic")
    assert code == 0, err
    rounds = (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(r)["protection"] for r in rounds] == ["homomorphic:all"] * 2
    assert "updates protected by" in (tmp_path / "out" / "report.html").read_text()


@needs_tenseal
def test_homomorphic_encryption_composes_with_dp_sgd_and_chosen_layers(tmp_path, capsys):
    code, err, summary = run(tmp_path, capsys, *small_data(tmp_path), "--homomorphic",
                             "--encrypt-layers", "head.*", "--dp-sgd", "--noise-multiplier", "1.0",
                             "--norm", "group")
    assert code == 0, err
    assert set(summary["privacy"]) >= {"dp_sgd", "homomorphic"} and len(summary["privacy"]["epsilon"]) == 3
    assert summary["privacy"]["homomorphic"]["encrypted_layers"] == "head.*"


@needs_tenseal
def test_the_simulation_gives_the_server_only_the_public_context():
    from medfed.algorithms.fedavg import FedAvg
    from medfed.privacy.mechanisms import Mechanisms
    from tests.privacy.test_secure_round import FakeSite, initial

    config = config_from_dict({"privacy": {"homomorphic": True}})
    mechanisms = Mechanisms.build(config, ["site-0", "site-1"])
    sites = mechanisms.wrap_sites({s: FakeSite(s, k, 10) for k, s in enumerate(["site-0", "site-1"])})
    strategy = mechanisms.wrap_strategy(FedAvg(initial()))
    assert not strategy.context.is_private()
    assert all(site.context.is_private() for site in sites.values())


@needs_tenseal
@pytest.mark.parametrize("flags, fragment", [
    (["--aggregator", "median"], "must see each plaintext update"),
    (["--aggregator", "krum"], "must see each plaintext update"),
    (["--aggregator", "trimmed-mean"], "must see each plaintext update"),
    (["--aggregator", "norm-bound"], "must see each plaintext update"),
    (["--algorithm", "fedadam"], "fedadam is refused"),
    (["--algorithm", "fedyogi"], "fedyogi is refused"),
    (["--secure-aggregation"], "choose one"),
    (["--client-dp"], "use DP-SGD at the sites with it"),
    (["--compress", "q8"], "compressed updates are refused"),
    (["--sites", "1"], "at least 2 sites"),
])
def test_what_must_see_plaintext_is_refused_in_one_line(tmp_path, capsys, flags, fragment):
    code, err, _ = run(tmp_path, capsys, "--homomorphic", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_encrypt_layers_without_homomorphic_is_one_line(tmp_path, capsys):
    code, err, _ = run(tmp_path, capsys, "--encrypt-layers", "head.*")
    assert code == 2 and "add --homomorphic" in err and len(err.strip().splitlines()) == 1


def test_without_tenseal_homomorphic_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tenseal", None)  # import tenseal now raises ImportError
    code = main(["run", "--homomorphic", "--out", str(tmp_path / "out"), "--no-baselines"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'medfed[he]'" in err and len(err.strip().splitlines()) == 1


@needs_tenseal
def test_the_privacy_section_takes_homomorphic_and_layer_patterns():
    config = config_from_dict({"privacy": {"homomorphic": True, "encrypt_layers": ["head.*"]}})
    assert config.privacy.encrypt_layers == ("head.*",)
    with pytest.raises(ConfigError, match="empty pattern"):
        config_from_dict({"privacy": {"homomorphic": True, "encrypt_layers": [" "]}})
