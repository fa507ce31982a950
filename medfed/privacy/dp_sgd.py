"""Sample-level differential privacy at a site: DP-SGD (Abadi et al., CCS 2016, Algorithm 1) with
Opacus, and the site's privacy budget.

Each step samples every training image independently with probability q = B / n (Poisson sampling,
Opacus' UniformWithReplacementSampler), clips each image's gradient to norm C, adds N(0, sigma^2 C^2)
to their sum (Opacus' DPOptimizer) and divides by the expected batch size B. The site's own RDP
accountant (Mironov et al. 2019; Opacus' RDPAccountant) composes every step of every round it
trains; epsilon at delta is reported with each update. With a target epsilon the site refuses a
round whose steps would take it past the target (PrivacyBudgetExhausted: the round loop records the
site as failed and the run goes on with the others); if sigma is not given, it is derived from the
target for the full plan of rounds x local epochs x 1/q steps (Opacus' get_noise_multiplier).

The weights that leave the site are post-processing of the noisy steps, so the epsilon covers
them; what else a site may send (training loss, label counts, validation metrics) is the site's
[policy] (deploy/site_policy.py), off by default under DP. Noise and Poisson sampling come from a
privacy/noise.py source: seeded in simulation (reproducible, not secret), OS entropy in a
deployment. The accountant's history can start from a site's ledger (privacy/ledger.py), so a
restarted site continues from what it has spent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator

from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.errors import ConfigError, PrivacyBudgetExhausted
from medfed.privacy.noise import Randomness, randomness
from medfed.types import Metrics, StateDict, Update


@dataclass(frozen=True)
class DPSGDSettings:
    noise_multiplier: float | None  # sigma; None: derived from target_epsilon
    max_grad_norm: float  # C
    target_epsilon: float | None  # the budget; None: no budget, epsilon is only reported
    delta: float


def sample_rate(n_train: int, batch_size: int) -> float:
    return min(1.0, batch_size / n_train)


def steps_per_epoch(rate: float) -> int:
    """Opacus' convention for Poisson sampling: 1 / q steps make an epoch."""
    return int(1 / rate)


def epsilon_after(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at delta of the RDP accountant after `history` [(sigma, q, steps), ...]."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta)


@dataclass
class SiteBudget:
    """A site's accountant (thin state over Opacus' RDPAccountant) and its budget."""

    noise_multiplier: float
    rate: float
    delta: float
    target: float | None = None
    accountant: RDPAccountant = field(default_factory=RDPAccountant)

    def spent(self) -> float:
        return epsilon_after(self.accountant.history, self.delta)

    def check(self, steps: int, site: str) -> None:
        """Refuse `steps` more steps if they would take epsilon past the target."""
        if self.target is None:
            return
        planned = [*self.accountant.history, (self.noise_multiplier, self.rate, steps)]
        after = epsilon_after(planned, self.delta)
        if after > self.target:
            raise PrivacyBudgetExhausted(
                f"{site} stops: its privacy budget is spent (epsilon {self.spent():.2f} so far, "
                f"{after:.2f} after this round > target {self.target:g} at delta {self.delta:g})")

    def step(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.rate)


def noise_for_target(settings: DPSGDSettings, rate: float, total_steps: int) -> float:
    """sigma such that total_steps steps at rate q reach at most the target epsilon."""
    if settings.noise_multiplier is not None:
        return settings.noise_multiplier
    if settings.target_epsilon is None:
        raise ConfigError("DP-SGD needs a noise multiplier or a target epsilon")
    return get_noise_multiplier(target_epsilon=settings.target_epsilon, target_delta=settings.delta,
                                sample_rate=rate, steps=total_steps, accountant="rdp")


def check_private_model(model: torch.nn.Module) -> None:
    """Opacus' own check (BatchNorm, unsupported layers), as one ConfigError; nothing is swapped."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"the model cannot train with DP-SGD: {errors[0]}; build it with "
                          "--norm group or --norm instance")


class NoisyOptimizer(DPOptimizer):
    """Opacus' DPOptimizer (clip each sample's gradient, sum, add noise, scale) with the noise
    drawn from a privacy/noise.py source instead of a torch.Generator."""

    def __init__(self, optimizer: torch.optim.Optimizer, noise: Randomness, **kwargs: object) -> None:
        super().__init__(optimizer, **kwargs)  # type: ignore[arg-type]
        self.noise_source = noise

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.summed_grad
            _check_processed_flag(summed)  # a clipped sum is never noised (released) twice
            noise = (self.noise_source.normal(tuple(summed.shape), std, summed.dtype).to(summed.device)
                     if std else torch.zeros_like(summed))
            p.grad = (summed + noise).view_as(p)
            _mark_as_processed(summed)


class DPSite:
    """A SiteTrainer whose training is DP-SGD (composition: the trainer's data, model, loss).

    seed: a seeded noise and sampling stream (simulation); None: OS entropy (a deployment).
    spent: the accountant's history so far (a site's ledger), so epsilon continues across runs."""

    def __init__(self, trainer: SiteTrainer, settings: DPSGDSettings, batch_size: int,
                 planned_epochs: int, seed: int | None,
                 spent: list[tuple[float, float, int]] | None = None) -> None:
        check_private_model(trainer.model)
        self.trainer = trainer
        self.settings = settings
        n = len(trainer.data.train)
        rate = sample_rate(n, batch_size)
        sigma = noise_for_target(settings, rate, planned_epochs * steps_per_epoch(rate))
        self.budget = SiteBudget(sigma, rate, settings.delta, settings.target_epsilon)
        self.budget.accountant.history = [tuple(h) for h in spent or []]  # type: ignore[misc]
        self.batch_size = batch_size
        self.private = GradSampleModule(trainer.model, loss_reduction="mean")  # per-sample grads
        self.noise = randomness(seed)
        self.sampling = randomness(None if seed is None else seed + 1)
        self.stopped: str | None = None  # why the site stopped training, once it has

    @property
    def site(self) -> str:
        return self.trainer.site

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        rate = self.budget.rate
        try:
            self.budget.check(options.epochs * steps_per_epoch(rate), self.site)
        except PrivacyBudgetExhausted as exc:
            self.stopped = self.stopped or str(exc)
            raise
        model = self.trainer.model
        model.load_state_dict(state)
        model.train()
        optimizer = NoisyOptimizer(self.trainer._optimizer(options),  # the site's optimizer rule
                                   self.noise, noise_multiplier=self.budget.noise_multiplier,
                                   max_grad_norm=self.settings.max_grad_norm,
                                   expected_batch_size=self.batch_size)
        total_loss, steps = 0.0, 0
        for _ in range(options.epochs):
            total_loss, steps = self._epoch(optimizer, options, total_loss, steps)
        state_out = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        metrics = {"train_loss": total_loss / max(steps, 1), "epsilon": self.budget.spent()}
        return Update(self.site, state_out, len(self.trainer.data.train), steps, metrics)

    def _epoch(self, optimizer: DPOptimizer, options: TrainOptions, total_loss: float, steps: int
               ) -> tuple[float, int]:
        for indices in self._poisson_batches():
            self.budget.step()  # every sampled step counts, an empty one too
            if len(indices) == 0:
                continue  # probability (1 - q)^n, about e^-B: nothing is released
            x, y = self._batch(indices)
            optimizer.zero_grad(set_to_none=True)
            loss = self.trainer.task_loss(self.private(x), y, options)
            with warnings.catch_warnings():  # the images need no gradient; Opacus' hooks say so
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            optimizer.step()  # clip each sample's gradient to C, add N(0, sigma^2 C^2), average
            total_loss += float(loss.detach())
            steps += 1
        return total_loss, steps

    def _poisson_batches(self) -> list[np.ndarray]:
        """One epoch of Poisson sampling (1/q steps; each image in each batch with probability q),
        as Opacus' UniformWithReplacementSampler, from the site's sampling source."""
        n, rate = len(self.trainer.data.train), self.budget.rate
        return [np.flatnonzero(self.sampling.uniform(n).numpy() < rate)
                for _ in range(steps_per_epoch(rate))]

    def _batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.trainer
        x = t.preprocess(t.data.train.x[index])
        if t.augment is not None:
            x = t.augment(x)
        return x.to(t.device), torch.from_numpy(t.data.train.y[index]).to(t.device)

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.trainer.evaluate(state, split)
