"""DP-SGD's DP-friendly recipe (privacy/dp_plan.py, dp_optimizer.py, weight_average.py), seen by
the adversary: a curious server that reads one site's update and knows the configuration. The
epsilon it is told must be the one of the steps that site really took, at the sampling rate of its
logical batch; one image, with all its augmented copies, must move a step by at most C; and the
averaged weights that leave the site must be a function of the noisy steps only.

Deliberate breaks of the mechanism that make a test here fail (tried by hand):
- each augmented copy clipped on its own (the fold after super().clip_and_accumulate()), the fold
  skipped, or no clip at all: test_copies_are_averaged_then_clipped_once;
- copies of different images averaged together (x.repeat instead of repeat_interleave in
  DPSite._batch): test_copies_of_one_image_make_the_release_of_one_image;
- a noisy step per physical batch (no BatchMemoryManager), the accountant at physical / n or at
  the [training] batch / n: test_the_accountant_counts_each_logical_step_at_its_rate;
- an empty logical batch skipped without a release, or not counted:
  test_every_draw_is_a_release_and_a_step_of_the_accountant;
- the average fed before each step, or from anything but the weights after a noisy step:
  test_the_averaged_weights_are_post_processing_of_the_noisy_steps.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModule
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from medfed.client.trainer import TrainOptions
from medfed.config import DataConfig, FederationConfig, ModelConfig, PrivacyConfig, RunConfig
from medfed.config_file import with_overrides
from medfed.errors import ConfigError
from medfed.experiment import prepare, site_trainer
from medfed.privacy import dp_plan as defaults
from medfed.privacy.dp_optimizer import NoisyOptimizer
from medfed.privacy.dp_plan import DPPlan, dp_plan
from medfed.privacy.dp_sgd import DPSGDSettings, DPSite, steps_per_epoch
from medfed.privacy.noise import Seeded
from medfed.privacy.weight_average import WeightAverage
from medfed.types import StateDict, Update

BASE = DPPlan(logical_batch=8, physical_batch=4, multiplicity=2, ema_decay=0.0, optimizer="sgd",
              lr=0.5, momentum=0.0)


def dp_site(plan: DPPlan, sigma: float | None = 1.0, clip: float = 1.0, augment: bool = True,
            target: float | None = None, epochs: int = 1) -> tuple[DPSite, StateDict]:
    """Site a of a tiny synthetic federation (about 27 training images) under DP-SGD."""
    config = RunConfig(device="cpu", baselines=False,
                       data=DataConfig(sites=3, synthetic_samples=90, synthetic_test=20,
                                       image_size=16, augment=augment),
                       model=ModelConfig(norm="group", width=8), federation=FederationConfig(rounds=1))
    setup = prepare(config)
    trainer = site_trainer(setup, 0, setup.federation.sites["site-a"])
    site = DPSite(trainer, DPSGDSettings(sigma, clip, target, 1e-5), plan, epochs, seed=0)
    return site, setup.initial


def train_recording(site: DPSite, start: StateDict, epochs: int = 1
                    ) -> tuple[Update, list[StateDict], list[int]]:
    """Train one round; return the update, the weights after each step the inner optimizer
    took (the noisy iterates) and the rows of each forward pass."""
    model = site.trainer.model
    iterates: list[StateDict] = []
    rows: list[int] = []

    def after_step(optimizer, args, kwargs) -> None:
        if not isinstance(optimizer, NoisyOptimizer):  # the inner optimizer: a real step
            iterates.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    step_hook = register_optimizer_step_post_hook(after_step)
    forward_hook = model.register_forward_hook(lambda m, x, y: rows.append(len(x[0])))
    try:
        update = site.train(start, TrainOptions(epochs=epochs))
    finally:
        step_hook.remove()
        forward_hook.remove()
    return update, iterates, rows


def test_copies_are_averaged_then_clipped_once():
    """Two images, two copies each; the gradient of mean(w . x) for a row is its x."""
    model = GradSampleModule(nn.Linear(3, 1, bias=False), loss_reduction="mean")
    optimizer = NoisyOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), Seeded(0),
                               multiplicity=2, noise_multiplier=0.0, max_grad_norm=1.0,
                               expected_batch_size=2)
    x = torch.tensor([[10.0, 0, 0], [0, 0, 0],  # image 0: mean (5, 0, 0), clipped to (1, 0, 0)
                      [0, 3, 0], [0, -1, 0]])  # image 1: mean (0, 1, 0), norm 1: kept
    model(x).mean().backward()
    optimizer.step()
    # Each copy clipped alone: (0.25, 0, 0); no clip: (2.5, 0.5, 0); no fold: (0.5, 0, 0).
    grad = model._module.weight.grad
    assert torch.allclose(grad, torch.tensor([[0.5, 0.5, 0.0]]), atol=1e-5)


def test_copies_of_one_image_make_the_release_of_one_image():
    """Without augmentation an image's K copies are equal, so averaging them must give exactly
    the release of K = 1: every image in the batch (q = 1), no noise, a small C."""
    plan = replace(BASE, logical_batch=1000, physical_batch=6, multiplicity=3)  # 2 images a pass
    one, start = dp_site(replace(plan, multiplicity=1), sigma=0.0, clip=1e-3, augment=False)
    three, _ = dp_site(plan, sigma=0.0, clip=1e-3, augment=False)
    a, b = one.train(start, TrainOptions()).state, three.train(start, TrainOptions()).state
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it did train
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_the_accountant_counts_each_logical_step_at_its_rate():
    """Logical batches of 8 images in forward passes of 2 (4 rows: 2 copies each): one noisy step
    and one accountant step per logical batch, at q = 8 / n."""
    site, start = dp_site(BASE)
    n = len(site.trainer.data.train)
    update, iterates, rows = train_recording(site, start, epochs=2)
    q = 8 / n
    assert site.budget.rate == q
    assert max(rows) <= 4 and len(rows) > len(iterates)  # logical batches were split
    assert len(iterates) == update.n_steps == 2 * steps_per_epoch(q)
    assert site.budget.accountant.history == [(1.0, q, len(iterates))]
    opacus = RDPAccountant()
    for _ in iterates:
        opacus.step(noise_multiplier=1.0, sample_rate=q)
    assert update.metrics["epsilon"] == pytest.approx(opacus.get_epsilon(1e-5), rel=1e-12)


def test_target_mode_derives_sigma_for_the_logical_batch_plan():
    site, start = dp_site(BASE, sigma=None, target=4.0, epochs=3)
    n = len(site.trainer.data.train)
    update, iterates, _ = train_recording(site, start, epochs=3)
    assert site.budget.accountant.history == [(site.budget.noise_multiplier, 8 / n, len(iterates))]
    assert 3.9 <= update.metrics["epsilon"] <= 4.0


def test_every_draw_is_a_release_and_a_step_of_the_accountant():
    """q = 1 / n: about a third of the logical batches sample no image. Each still releases a
    noisy step (the noise alone) and is counted."""
    site, start = dp_site(replace(BASE, logical_batch=1))
    n = len(site.trainer.data.train)
    update, iterates, rows = train_recording(site, start)
    assert len(rows) < len(iterates)  # some draws were empty: no forward pass
    assert len(iterates) == update.n_steps == steps_per_epoch(1 / n)
    assert site.budget.accountant.history == [(1.0, 1 / n, len(iterates))]


def ema(start: StateDict, iterates: list[StateDict], decay: float) -> StateDict:
    """WeightAverage's rule, written out: warm-up decay min(d, (1 + t) / (10 + t))."""
    average = {k: v.clone() for k, v in start.items()}
    for t, weights in enumerate(iterates):
        d = min(decay, (1 + t) / (10 + t))
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
    return average


@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_the_averaged_weights_are_post_processing_of_the_noisy_steps(decay):
    """What leaves the site is a function of the start (the global model) and the weights after
    each noisy step, nothing else; with decay 0, the last of them."""
    site, start = dp_site(replace(BASE, ema_decay=decay, logical_batch=4))
    update, iterates, _ = train_recording(site, start)
    assert len(iterates) >= 5
    expected = ema(start, iterates, decay) if decay else iterates[-1]
    for k, v in update.state.items():
        assert torch.allclose(v, expected[k], atol=1e-6), k


def test_weight_average_keeps_integer_buffers_as_they_are():
    model = nn.BatchNorm1d(2)  # a float running mean and an integer batch counter
    average = WeightAverage(model, 0.5)
    model.train()
    model(torch.randn(4, 2))
    average.update(model)
    assert average.state()["num_batches_tracked"].item() == 1
    assert not torch.equal(average.state()["running_mean"], model.running_mean)


def test_dp_sgd_takes_the_dp_friendly_recipe_unless_told_otherwise():
    config = with_overrides(RunConfig(), {"dp_sgd": True, "target_epsilon": 8.0})
    plan = dp_plan(config.privacy, config.data.augment)
    assert plan == DPPlan(defaults.LOGICAL_BATCH, defaults.PHYSICAL_BATCH, defaults.MULTIPLICITY,
                          defaults.EMA_DECAY, defaults.OPTIMIZER, defaults.LR, defaults.MOMENTUM)
    config = with_overrides(config, {"logical_batch": 64, "ema_decay": 0.0, "dp_lr": 0.1,
                                     "dp_optimizer": "adam"})
    plan = dp_plan(config.privacy, augment=False)
    assert (plan.logical_batch, plan.ema_decay, plan.lr, plan.optimizer) == (64, 0.0, 0.1, "adam")
    assert plan.multiplicity == 1  # nothing to multiply without augmentation


@pytest.mark.parametrize("key, value", [("ema_decay", 1.0), ("logical_batch", 0),
                                        ("augment_multiplicity", 0), ("dp_optimizer", "rmsprop"),
                                        ("dp_lr", 0.0), ("dp_momentum", -0.1)])
def test_a_bad_recipe_value_is_one_clear_error(key, value):
    with pytest.raises(ConfigError, match=key):
        PrivacyConfig(dp_sgd=True, target_epsilon=8.0, **{key: value})
