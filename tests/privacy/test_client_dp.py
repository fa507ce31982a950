"""DP-FedAvg: clipping, the calibrated noise, and the federation's accountant."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants.analysis import rdp as rdp_analysis

from medfed.algorithms.fedavg import FedAvg
from medfed.privacy.client_dp import ClientDP, clip_delta
from medfed.privacy.noise import Seeded
from medfed.types import Update


def dp(noise=1.0, clip=1.0, rate=1.0, seed=0):
    return ClientDP(clip, noise, rate, Seeded(seed))


def test_clip_delta_bounds_the_norm_and_keeps_small_changes():
    reference = {"w": torch.zeros(4)}
    big, clipped = clip_delta({"w": torch.tensor([3.0, 4.0, 0.0, 0.0])}, reference, 1.0)
    assert clipped and float(big["w"].norm()) == pytest.approx(1.0)
    small, clipped = clip_delta({"w": torch.tensor([0.3, 0.4, 0.0, 0.0])}, reference, 1.0)
    assert not clipped and float(small["w"].norm()) == pytest.approx(0.5)


def test_noise_has_the_calibrated_standard_deviation():
    """m sites that send the reference back: the model moves by N(0, (sigma S)^2) / m exactly."""
    sigma, clip, m, d = 0.8, 2.0, 4, 200_000
    reference = {"w": torch.zeros(d)}
    mech = dp(noise=sigma, clip=clip)
    aggregator = mech.aggregator()(reference)
    for _ in range(m):
        aggregator.add({"w": torch.zeros(d)}, 10)
    moved = aggregator.result()["w"]
    expected = sigma * clip / m
    # the sample std of 200k normals is within 0.5% of the true one (5 standard errors)
    assert float(moved.std()) == pytest.approx(expected, rel=5 / math.sqrt(2 * d))
    assert abs(float(moved.mean())) < 5 * expected / math.sqrt(d)


def test_the_aggregate_is_the_mean_of_clipped_updates_plus_noise_and_notes_who_was_clipped():
    reference = {"w": torch.zeros(2), "n": torch.tensor(1)}
    mech = dp(noise=1e-9, clip=1.0)
    aggregator = mech.aggregator()(reference)
    aggregator.add({"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(5)}, 100)  # clipped to norm 1
    aggregator.add({"w": torch.tensor([0.0, 0.5]), "n": torch.tensor(2)}, 1)  # equal weights
    out = aggregator.result()
    torch.testing.assert_close(out["w"], torch.tensor([0.3, 0.65], dtype=torch.float64))
    assert int(out["n"]) == 5 and aggregator.notes() == {"clipped": [0]}


def test_fedavg_with_client_dp_is_seeded():
    def one_round(seed):
        strategy = FedAvg({"w": torch.zeros(3)}, aggregator=dp(seed=seed).aggregator())
        strategy.open_stage()
        strategy.receive(Update("a", {"w": torch.ones(3)}, 5, 1))
        strategy.close_stage()
        return strategy.global_state["w"]

    torch.testing.assert_close(one_round(1), one_round(1))
    assert not torch.equal(one_round(1), one_round(2))


def test_the_federation_epsilon_is_the_subsampled_gaussian_rdp():
    mech = dp(noise=1.1, rate=0.5)
    reference = {"w": torch.zeros(2)}
    for _ in range(20):
        aggregator = mech.aggregator()(reference)
        aggregator.add({"w": torch.ones(2)}, 1)
        aggregator.result()
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = rdp_analysis.compute_rdp(q=0.5, noise_multiplier=1.1, steps=20, orders=orders)
    expected, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert mech.epsilon(1e-5) == pytest.approx(expected, rel=1e-9)
