"""DP-SGD at the sites: epsilon against an independent RDP computation, target mode, the budget
that stops a site, and BatchNorm refused."""

from __future__ import annotations

import pytest
from opacus.accountants.analysis import rdp as rdp_analysis
from torch import nn

from medfed.config import DataConfig, FederationConfig, ModelConfig, PrivacyConfig, RunConfig, TrainingConfig
from medfed.errors import ConfigError
from medfed.experiment import prepare, train
from medfed.privacy.dp_sgd import (
    DPSGDSettings,
    check_private_model,
    epsilon_after,
    noise_for_target,
    sample_rate,
    steps_per_epoch,
)

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def reference_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS)
    return rdp_analysis.get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0]


@pytest.mark.parametrize("q, sigma, steps", [(0.01, 1.0, 1000), (0.1, 0.8, 50), (1.0, 2.0, 3)])
def test_our_epsilon_is_the_rdp_of_the_subsampled_gaussian(q, sigma, steps):
    assert epsilon_after([(sigma, q, steps)], 1e-5) == pytest.approx(
        reference_epsilon(q, sigma, steps, 1e-5), rel=1e-12)
    # composition: two entries are the same as their steps together
    assert epsilon_after([(sigma, q, steps), (sigma, q, steps)], 1e-5) == pytest.approx(
        reference_epsilon(q, sigma, 2 * steps, 1e-5), rel=1e-12)


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_target_epsilon_derives_a_sigma_that_reaches_at_most_the_target(target):
    q, steps = 0.05, 200
    sigma = noise_for_target(DPSGDSettings(None, 1.0, target, 1e-5), q, steps)
    reached = epsilon_after([(sigma, q, steps)], 1e-5)
    assert target - 0.05 <= reached <= target


def tiny(privacy: PrivacyConfig, sizes=(), rounds=2, norm="instance") -> RunConfig:
    data = DataConfig(sites=3, synthetic_samples=150, synthetic_test=20, image_size=16,
                      sizes=sizes, partition="quantity" if sizes else None)
    return RunConfig(device="cpu", baselines=False, data=data, model=ModelConfig(norm=norm),
                     federation=FederationConfig(rounds=rounds, eval_every=0),
                     # DP-SGD's batch is [privacy]'s logical_batch: [training]'s is refused with it
                     training=TrainingConfig() if privacy.dp_sgd else TrainingConfig(batch_size=16),
                     privacy=privacy)


def test_each_site_reports_the_epsilon_of_the_steps_it_took():
    config = tiny(PrivacyConfig(dp_sgd=True, noise_multiplier=1.0, logical_batch=16))
    setup = prepare(config)
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    for site, data in setup.federation.sites.items():
        q = sample_rate(len(data.train), 16)
        after_one = reference_epsilon(q, 1.0, steps_per_epoch(q), 1e-5)
        after_two = reference_epsilon(q, 1.0, 2 * steps_per_epoch(q), 1e-5)
        assert outcome.history[0].epsilon[site] == pytest.approx(after_one, rel=1e-9)
        assert outcome.history[1].epsilon[site] == pytest.approx(after_two, rel=1e-9)
        assert outcome.privacy["epsilon"][site] == pytest.approx(after_two, rel=1e-9)
    assert outcome.privacy["delta"] == 1e-5 and outcome.privacy["dp_sgd"]["stopped"] == {}


def test_target_mode_trains_every_round_within_the_target():
    # larger sites (a lower sampling rate) keep Opacus' search for sigma fast
    setup = prepare(tiny(PrivacyConfig(dp_sgd=True, target_epsilon=3.0, logical_batch=16),
                         sizes=(150, 160, 170)))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    assert all(len(r.sites) == 3 for r in outcome.history)
    assert all(2.9 <= e <= 3.0 for e in outcome.privacy["epsilon"].values())


def test_a_site_whose_budget_is_spent_stops_and_the_run_goes_on():
    sizes = (30, 30, 90)  # sites of different sizes spend their budgets at different speeds
    setup = prepare(tiny(PrivacyConfig(dp_sgd=True, noise_multiplier=1.0, logical_batch=16), sizes=sizes))
    rates = {s: sample_rate(len(d.train), 16) for s, d in setup.federation.sites.items()}
    first = {s: reference_epsilon(q, 1.0, steps_per_epoch(q), 1e-5) for s, q in rates.items()}
    second = {s: reference_epsilon(q, 1.0, 2 * steps_per_epoch(q), 1e-5) for s, q in rates.items()}
    large = min(second, key=second.get)  # the site that can afford a second round
    target = (second[large] + min(e for s, e in second.items() if s != large)) / 2
    assert max(first.values()) < target  # every site trains once, only `large` twice
    setup = prepare(tiny(PrivacyConfig(dp_sgd=True, noise_multiplier=1.0, target_epsilon=target,
                                       logical_batch=16), sizes=sizes))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    stopped = set(outcome.history[1].failed)
    assert outcome.history[0].failed == {} and large not in stopped and stopped
    assert outcome.history[1].sites == [large]
    for site in stopped:
        assert "privacy budget is spent" in outcome.history[1].failed[site]
        assert site in outcome.privacy["dp_sgd"]["stopped"]
        assert outcome.privacy["epsilon"][site] <= target


def test_batchnorm_in_a_dp_run_is_one_clear_error():
    with pytest.raises(ConfigError, match="use --norm group or --norm instance"):
        tiny(PrivacyConfig(dp_sgd=True, noise_multiplier=1.0, logical_batch=16), norm="batch")
    with pytest.raises(ConfigError, match="--norm group or --norm instance"):
        check_private_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    check_private_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)))  # fine


def test_dp_sgd_needs_sigma_or_a_target_and_a_plain_loss():
    with pytest.raises(ConfigError, match="noise_multiplier .* or target_epsilon"):
        PrivacyConfig(dp_sgd=True)
    with pytest.raises(ConfigError, match="fedprox changes it"):
        RunConfig(federation=FederationConfig(algorithm="fedprox"),
                  privacy=PrivacyConfig(dp_sgd=True, noise_multiplier=1.0, logical_batch=16))
