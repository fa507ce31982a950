"""Simulated attacks: parsing, what each one sends, label flipping, and the malicious site in a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medfed.client.attack_spec import Attack, AttackKind, parse_attack
from medfed.client.attacks import MaliciousSite, flip_labels, tamper
from medfed.config import AdversaryConfig, DataConfig, FederationConfig, RunConfig, TrainingConfig
from medfed.data.dataset import Samples
from medfed.errors import ConfigError
from medfed.experiment import attacker_sites, prepare, train
from medfed.run import execute_run
from medfed.types import CONTROL_PREFIX, Task

SENT = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), CONTROL_PREFIX + "w": torch.zeros(2)}
HONEST = {"w": torch.tensor([1.5, 1.0]), "n": torch.tensor(4), CONTROL_PREFIX + "w": torch.ones(2)}


def sent_after(text: str, seed: int = 0):
    return tamper(Attack.parse(text), SENT, HONEST, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("text", "kind", "factor"), [
    ("scale:100", AttackKind.SCALE, 100.0), ("scale:-10", AttackKind.SCALE, -10.0),
    ("sign-flip", AttackKind.SIGN_FLIP, 1.0), ("noise", AttackKind.NOISE, 1.0),
    ("noise:0.1", AttackKind.NOISE, 0.1), ("label-flip", AttackKind.LABEL_FLIP, 1.0),
    ("nan", AttackKind.NAN, 1.0), ("free-ride", AttackKind.FREE_RIDE, 1.0)])
def test_parse(text, kind, factor):
    assert Attack.parse(text) == Attack(kind, factor)


def test_none_is_no_attack():
    assert parse_attack("none") is None


@pytest.mark.parametrize(("text", "fragment"), [
    ("scale", "needs a factor, e.g. scale:100"),
    ("scale:lots", "needs a number after ':'"),
    ("scale:inf", "must be finite"),
    ("noise:-1", "> 0 for noise"),
    ("nan:3", "takes no ':3'"),
    ("sign_flip", "did you mean 'sign-flip'"),
    ("backdoor", "valid: label-flip, scale:F, sign-flip, noise[:S], nan, free-ride, none")])
def test_a_wrong_attack_is_one_clear_error(text, fragment):
    with pytest.raises(ConfigError) as info:
        Attack.parse(text)
    assert fragment in str(info.value)


def test_scale_multiplies_the_change_and_a_negative_factor_flips_it():
    torch.testing.assert_close(sent_after("scale:100")["w"], torch.tensor([51.0, -98.0]))
    torch.testing.assert_close(sent_after("scale:-2")["w"], torch.tensor([0.0, 4.0]))


def test_sign_flip_reverses_the_change():
    torch.testing.assert_close(sent_after("sign-flip")["w"], torch.tensor([0.5, 3.0]))


def test_free_ride_returns_the_model_it_was_sent():
    assert torch.equal(sent_after("free-ride")["w"], SENT["w"])


def test_nan_fills_every_float_tensor():
    assert torch.isnan(sent_after("nan")["w"]).all()


def test_noise_has_the_requested_standard_deviation_and_is_seeded():
    big_sent = {"w": torch.zeros(20_000)}
    out = tamper(Attack.parse("noise:0.5"), big_sent, big_sent, torch.Generator().manual_seed(1))
    assert out["w"].std().item() == pytest.approx(0.5, rel=0.03)
    assert abs(out["w"].mean().item()) < 0.02
    again = tamper(Attack.parse("noise:0.5"), big_sent, big_sent, torch.Generator().manual_seed(1))
    assert torch.equal(out["w"], again["w"])


@pytest.mark.parametrize("text", ["scale:100", "sign-flip", "noise", "nan", "free-ride"])
def test_counters_and_control_variates_are_left_as_trained(text):
    out = sent_after(text)
    assert torch.equal(out["n"], HONEST["n"])
    assert torch.equal(out[CONTROL_PREFIX + "w"], HONEST[CONTROL_PREFIX + "w"])


def test_flip_labels_per_task():
    x = np.zeros((4, 1, 2, 2), np.uint8)
    binary = flip_labels(Samples(x, np.array([0, 1, 1, 0])), Task.BINARY, 2)
    assert binary.y.tolist() == [1, 0, 0, 1] and binary.x is x
    grades = flip_labels(Samples(x, np.array([0, 1, 2, 4])), Task.ORDINAL, 5)
    assert grades.y.tolist() == [4, 3, 2, 0]
    findings = flip_labels(Samples(x, np.array([[1, 0], [0, 0], [1, 1], [0, 1]], np.float32)),
                           Task.MULTILABEL, 2)
    assert findings.y.tolist() == [[0, 1], [1, 1], [0, 0], [1, 0]]
    assert findings.y.dtype == np.float32


def tiny(attack: str, attackers: int = 1, aggregator: str = "mean") -> RunConfig:
    return RunConfig(device="cpu", baselines=False,
                     data=DataConfig(sites=5, synthetic_samples=150, synthetic_test=20),
                     federation=FederationConfig(rounds=1, aggregator=aggregator, eval_every=0),
                     training=TrainingConfig(batch_size=16),
                     adversary=AdversaryConfig(attack=attack, attackers=attackers))


def test_the_first_attackers_sites_are_malicious_and_baselines_stay_honest():
    config = tiny("sign-flip", attackers=2)
    setup = prepare(config)
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    sites = outcome.transport.trainers
    assert [s for s, t in sites.items() if isinstance(t, MaliciousSite)] == ["site-a", "site-b"]
    assert attacker_sites(config, setup.federation.site_ids) == ["site-a", "site-b"]
    baseline = train(setup, "ensemble", setup.federation.sites, "local", baseline=True)
    assert not any(isinstance(t, MaliciousSite) for t in baseline.transport.trainers.values())


def test_a_label_flipping_site_trains_on_flipped_labels_only():
    setup = prepare(tiny("label-flip"))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    attacker = outcome.transport.trainers["site-a"]
    own = setup.federation.sites["site-a"]
    assert np.array_equal(attacker.trainer.data.train.y, 1 - own.train.y)
    assert np.array_equal(attacker.trainer.data.val.y, own.val.y)


def test_a_nan_site_is_rejected_and_recorded_and_the_round_closes_with_the_others():
    setup = prepare(tiny("nan"))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    result = outcome.history[0]
    assert set(result.failed) == {"site-a"} and "NaN" in result.failed["site-a"]
    assert result.sites == ["site-b", "site-c", "site-d", "site-e"]
    assert all(torch.isfinite(v).all() for v in outcome.strategy.global_state.values()
               if v.is_floating_point())


def parameter_change(outcome, setup) -> float:
    g = outcome.strategy.global_state
    return max(float((g[k] - setup.initial[k]).abs().max()) for k in setup.parameter_keys)


def test_a_scaled_update_drags_the_mean_but_not_the_median():
    clean_setup = prepare(tiny("none"))
    clean = parameter_change(train(clean_setup, "fedavg", clean_setup.federation.sites, "c"),
                             clean_setup)
    changes = {}
    for aggregator in ("mean", "median"):
        setup = prepare(tiny("scale:1000", aggregator=aggregator))
        changes[aggregator] = parameter_change(train(setup, "fedavg", setup.federation.sites, "a"),
                                               setup)
    assert changes["mean"] > 20 * clean
    assert changes["median"] < 2 * clean


def test_summary_names_the_attack_and_aggregator(tmp_path):
    execute_run(tiny("free-ride", aggregator="median"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["aggregator"] == "median"
    assert summary["attack"] == {"kind": "free-ride", "sites": ["site-a"]}


def test_the_round_records_update_norms_and_whom_krum_left_out():
    setup = prepare(tiny("scale:1000", aggregator="krum"))
    result = train(setup, "fedavg", setup.federation.sites, "krum").history[0]
    norms = result.update_norm
    assert set(norms) == set(result.sites)
    assert norms["site-a"] > 100 * max(v for s, v in norms.items() if s != "site-a")
    assert "site-a" in result.aggregation["left_out"]
    assert len(result.aggregation["left_out"]) == 4  # Krum keeps exactly one update


def test_the_round_records_whom_norm_bounding_clipped():
    setup = prepare(tiny("scale:1000", aggregator="norm-bound"))
    result = train(setup, "fedavg", setup.federation.sites, "nb").history[0]
    assert "site-a" in result.aggregation["clipped"]  # the median norm clips the attacker
