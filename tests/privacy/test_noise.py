"""The privacy mechanisms themselves, not their bookkeeping: what DP-SGD releases is clipped and
carries noise of the calibrated variance; client-level DP's noise on the sum has the calibrated
variance, with and without secure aggregation; a deployment's noise cannot be predicted from the
configuration (OS entropy), while simulation stays reproducible.

Adversary: whoever sees what a site releases (the coordinator, other sites) and holds the
configuration. Deliberate breaks of the mechanism that make a test here fail (tried by hand):
- DP-SGD without clipping (max_grad_norm ignored in privacy/dp_optimizer.py's NoisyOptimizer): the clipping bound fails;
- DP-SGD without noise (add_noise adds zeros) or with noise std sigma instead of sigma * C: the
  variance test fails;
- client-DP noise removed, under secure aggregation (secure_round.close_stage) or without it
  (ClippedNoisyMean.result): the variance tests fail;
- a deployment's noise seeded from the configuration (Mechanisms.build ignoring `deployed`): the
  "two deployments differ" test fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions
from medfed.config import DataConfig, FederationConfig, ModelConfig, PrivacyConfig, RunConfig, TrainingConfig
from medfed.experiment import prepare, site_trainer
from medfed.privacy.client_dp import ClientDP, ClippedNoisyMean
from medfed.privacy.dp_plan import DPPlan
from medfed.privacy.dp_sgd import DPSGDSettings, DPSite
from medfed.privacy.mechanisms import Mechanisms
from medfed.privacy.noise import OsEntropy, Seeded
from medfed.privacy.secure_round import InProcessCoordinator, SecureAggregation, SecureSite
from medfed.privacy.signing import ephemeral_identities
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.transport.inprocess import InProcessTransport
from medfed.types import Update

SGD = TrainOptions(epochs=1, lr=1.0, optimizer="sgd", momentum=0.0)


def one_site():
    config = RunConfig(device="cpu", baselines=False,
                       data=DataConfig(sites=3, synthetic_samples=90, synthetic_test=20, image_size=16),
                       model=ModelConfig(norm="group"), federation=FederationConfig(rounds=1),
                       training=TrainingConfig(batch_size=8))
    setup = prepare(config)
    data = setup.federation.sites["site-a"]
    return setup, site_trainer(setup, 0, data), len(data.train)


def dp_step(sigma: float, clip: float, seed: int | None) -> torch.Tensor:
    """The change one DP-SGD step (q = 1: every image, one step, plain SGD at lr 1) makes to the
    parameters, flattened."""
    setup, trainer, n = one_site()
    plan = DPPlan(logical_batch=n, physical_batch=n, multiplicity=1, ema_decay=0.0,
                  optimizer="sgd", lr=1.0, momentum=0.0)
    site = DPSite(trainer, DPSGDSettings(sigma, clip, None, 1e-5), plan, planned_epochs=1,
                  seed=seed)
    start = setup.initial
    out = site.train(start, SGD).state
    names = [k for k, _ in trainer.model.named_parameters()]
    return torch.cat([(out[k] - start[k]).double().flatten() for k in names])


def test_dp_sgd_releases_per_sample_gradients_clipped_to_c():
    """With no noise, one step over all n images moves the weights by (sum of n clipped gradients)
    / n: at most C in norm. Unclipped gradients of a fresh model are far larger than C = 1e-3."""
    change = dp_step(sigma=0.0, clip=1e-3, seed=0)
    assert 0 < float(change.norm()) <= 1e-3 * (1 + 1e-5)


def test_dp_sgd_noise_has_the_calibrated_variance():
    """sigma = 50, C = 1, n images: each coordinate moves by N(0, (sigma C / n)^2) plus a clipped
    signal of norm <= C spread over ~30k coordinates (negligible)."""
    sigma, clip = 50.0, 1.0
    _, _, n = one_site()
    change = dp_step(sigma, clip, seed=0)
    measured = float(change.std())
    assert measured == pytest.approx(sigma * clip / n, rel=0.03)


def test_dp_sgd_in_a_deployment_draws_fresh_noise_and_in_simulation_replays_its_seed():
    a, b = dp_step(5.0, 1.0, seed=None), dp_step(5.0, 1.0, seed=None)
    assert not torch.equal(a, b)  # OS entropy: the configuration does not determine the noise
    torch.testing.assert_close(dp_step(5.0, 1.0, seed=3), dp_step(5.0, 1.0, seed=3), rtol=0, atol=0)


def test_the_os_entropy_source_is_standard_normal_and_uniform():
    source = OsEntropy()
    z = source.normal((200_000,), 2.0, torch.float64)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.02) and float(z.std()) == pytest.approx(2.0, rel=0.01)
    u = source.uniform(100_000)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and float(u.mean()) == pytest.approx(0.5, abs=0.01)
    assert not torch.equal(OsEntropy().uniform(8), OsEntropy().uniform(8))


def big_state() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(100, 100), "b": torch.zeros(100)}


@pytest.mark.parametrize("noise", [Seeded(1), OsEntropy()])
def test_client_dp_noise_on_the_sum_has_the_calibrated_variance(noise):
    """m sites that change nothing: the new model is the reference plus N(0, (sigma S)^2) / m."""
    sigma, clip, m = 3.0, 0.5, 4
    dp = ClientDP(clip, sigma, 1.0, noise)
    mean = ClippedNoisyMean(big_state(), dp)
    for _ in range(m):
        mean.add(big_state(), 1.0)
    out = torch.cat([v.flatten() for v in mean.result().values()])
    assert float(out.std()) == pytest.approx(sigma * clip / m, rel=0.03)
    assert dp.rounds == 1


class StillSite:
    """A site whose training changes nothing (so all that moves the model is the server's noise)."""

    def __init__(self, site: str) -> None:
        self.site = site

    def train(self, state, options):
        return Update(self.site, {k: v.clone() for k, v in state.items()}, 10, 1, {})

    def evaluate(self, state, split):
        return {}


def test_client_dp_noise_under_secure_aggregation_has_the_calibrated_variance():
    sigma, clip, m = 3.0, 0.5, 4
    dp = ClientDP(clip, sigma, 1.0, Seeded(2))
    still = {f"site-{k}": StillSite(f"site-{k}") for k in range(m)}
    keys = ephemeral_identities(still)
    sites = {s: SecureSite(site, clip=clip, identity=keys[s]) for s, site in still.items()}
    strategy = SecureAggregation(FedAvg(big_state()), InProcessCoordinator(sites), None,
                                 client_dp=dp)
    run_rounds(strategy, InProcessTransport(sites), list(sites), RoundPlan(1, eval_every=0),
               TrainOptions(), np.random.default_rng(0))
    out = torch.cat([v.double().flatten() for v in strategy.global_state.values()])
    assert float(out.std()) == pytest.approx(sigma * clip / m, rel=0.03)


def test_a_deployed_federation_never_takes_its_noise_from_the_seed():
    config = RunConfig(privacy=PrivacyConfig(client_dp=True, noise=1.0), data=DataConfig(sites=3))
    draws = [Mechanisms.build(config, ["a", "b", "c"], deployed=True).client_dp.noise.uniform(4)
             for _ in range(2)]
    assert not torch.equal(*draws)
    simulated = [Mechanisms.build(config, ["a", "b", "c"]).client_dp.noise.uniform(4) for _ in range(2)]
    assert torch.equal(*simulated)
    assert "OS entropy" in Mechanisms.build(config, ["a"], deployed=True).report()["noise"]
