"""Sample-level differential privacy at a site: DP-SGD (Abadi et al., CCS 2016, Algorithm 1) with
Opacus, trained with the DP-friendly recipe of privacy/dp_plan.py, and the site's privacy budget.

Each noisy step samples every training image independently with probability q = L / n, L the
logical batch (Poisson sampling, as Opacus' UniformWithReplacementSampler); Opacus'
BatchMemoryManager cuts the sampled batch into physical batches that fit in memory. Each image
comes with K augmented copies whose gradients are averaged, then clipped once to norm C; the sum
over the logical batch gets N(0, sigma^2 C^2) and is divided by the expected batch q n
(privacy/dp_optimizer.py). The site's own RDP accountant (Mironov et al. 2019; Opacus'
RDPAccountant) counts every logical batch drawn, at rate q, over every round it trains; epsilon at
delta is reported with each update. With a target epsilon the site refuses a round whose steps
would take it past the target (PrivacyBudgetExhausted: the round loop records the site as failed
and the run goes on with the others); if sigma is not given, it is derived from the target for the
full plan of rounds x local epochs x 1/q steps (Opacus' get_noise_multiplier).

The weights that leave the site, the last noisy iterate or their moving average
(privacy/weight_average.py), are post-processing of the noisy steps, so the epsilon covers them;
what else a site may send (training loss, label counts, validation metrics) is the site's [policy]
(deploy/site_policy.py), off by default under DP. Noise and Poisson sampling come from a
privacy/noise.py source: seeded in simulation (reproducible, not secret), OS entropy in a
deployment. The accountant's history can start from a site's ledger (privacy/ledger.py), so a
restarted site continues from what it has spent.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModule
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, Sampler

from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.errors import ConfigError, PrivacyBudgetExhausted
from medfed.privacy.dp_optimizer import NoisyOptimizer
from medfed.privacy.dp_plan import DPPlan
from medfed.privacy.noise import Randomness, randomness
from medfed.privacy.weight_average import WeightAverage
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


@dataclass
class DPSiteRecord:
    """A DP-SGD site's budget as the site reports it, for the run's privacy summary: a site that
    trained in another process (a Ray worker) keeps its DPSite there."""

    budget: SiteBudget
    stopped: str | None = None

    @classmethod
    def from_json(cls, record: dict) -> DPSiteRecord:
        budget = SiteBudget(record["noise_multiplier"], record["rate"], record["delta"],
                            record["target"])
        budget.accountant.history = [tuple(h) for h in record["history"]]
        return cls(budget, record["stopped"])


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


class PoissonBatches(Sampler[list[int]]):
    """One epoch of logical batches (1/q of them), each image in each with probability q, as
    Opacus' UniformWithReplacementSampler, drawn from the site's sampling source. Each draw is one
    step of the mechanism and is counted by the accountant as it is drawn, an empty one too."""

    def __init__(self, n: int, budget: SiteBudget, source: Randomness) -> None:
        self.n, self.budget, self.source = n, budget, source

    def __len__(self) -> int:
        return steps_per_epoch(self.budget.rate)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(len(self)):
            self.budget.step()
            yield np.flatnonzero(self.source.uniform(self.n).numpy() < self.budget.rate).tolist()


class DPSite:
    """A SiteTrainer whose training is DP-SGD (composition: the trainer's data, model, loss),
    with the DP-friendly recipe of `plan` (privacy/dp_plan.py).

    seed: a seeded noise and sampling stream (simulation); None: OS entropy (a deployment).
    spent: the accountant's history so far (a site's ledger), so epsilon continues across runs."""

    def __init__(self, trainer: SiteTrainer, settings: DPSGDSettings, plan: DPPlan,
                 planned_epochs: int, seed: int | None,
                 spent: list[tuple[float, float, int]] | None = None) -> None:
        check_private_model(trainer.model)
        self.trainer = trainer
        self.settings = settings
        self.plan = plan
        rate = sample_rate(len(trainer.data.train), plan.logical_batch)  # q of the logical batch
        sigma = noise_for_target(settings, rate, planned_epochs * steps_per_epoch(rate))
        self.budget = SiteBudget(sigma, rate, settings.delta, settings.target_epsilon)
        self.budget.accountant.history = [tuple(h) for h in spent or []]  # type: ignore[misc]
        self.private = GradSampleModule(trainer.model, loss_reduction="mean")  # per-sample grads
        self.noise = randomness(seed)
        self.sampling = randomness(None if seed is None else seed + 1)
        self.stopped: str | None = None  # why the site stopped training, once it has

    @property
    def site(self) -> str:
        return self.trainer.site

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        try:
            self.budget.check(options.epochs * steps_per_epoch(self.budget.rate), self.site)
        except PrivacyBudgetExhausted as exc:
            self.stopped = self.stopped or str(exc)
            raise
        self.trainer.reseed(options.round)  # the round's augmentation, as a plain site's
        model = self.trainer.model
        model.load_state_dict(state)
        model.train()
        optimizer = self._optimizer(options)
        average = WeightAverage(model, self.plan.ema_decay) if self.plan.ema_decay else None
        released = [0]  # noisy steps taken; Opacus calls the hook only for those
        optimizer.attach_step_hook(lambda _: released.__setitem__(0, released[0] + 1))
        losses: list[float] = []
        for _ in range(options.epochs):
            self._epoch(optimizer, options, average, released, losses)
        state_out = average.state() if average else {
            k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        metrics = {"train_loss": float(np.mean(losses)) if losses else 0.0,
                   "epsilon": self.budget.spent()}
        return Update(self.site, state_out, len(self.trainer.data.train), released[0], metrics)

    def _optimizer(self, options: TrainOptions) -> NoisyOptimizer:
        p = self.plan
        params = self.trainer.model.parameters()
        inner = (torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=options.weight_decay)
                 if p.optimizer == "sgd" else
                 torch.optim.Adam(params, lr=p.lr, weight_decay=options.weight_decay))
        return NoisyOptimizer(inner, self.noise, multiplicity=p.multiplicity,
                              noise_multiplier=self.budget.noise_multiplier,
                              max_grad_norm=self.settings.max_grad_norm,
                              # q n: the logical batch, or every image when it exceeds them
                              expected_batch_size=round(self.budget.rate * len(self.trainer.data.train)))

    def _epoch(self, optimizer: NoisyOptimizer, options: TrainOptions, average: WeightAverage | None,
               released: list[int], losses: list[float]) -> None:
        """One epoch of logical batches, each cut into physical ones by Opacus' BatchMemoryManager:
        the optimizer clips and sums every physical batch and noises and steps once per logical one."""
        n = len(self.trainer.data.train)
        loader = DataLoader(range(n), batch_sampler=PoissonBatches(n, self.budget, self.sampling),
                            collate_fn=np.asarray)
        with BatchMemoryManager(data_loader=loader, optimizer=optimizer,
                                max_physical_batch_size=self.plan.physical_images) as physical:
            for indices in physical:
                before = released[0]
                if len(indices) == 0:
                    optimizer.release_noise_only()
                else:
                    losses.append(self._physical_step(optimizer, indices, options))
                optimizer.zero_grad(set_to_none=True)  # keeps the clipped sum until the step
                if average is not None and released[0] > before:
                    average.update(self.trainer.model)

    def _physical_step(self, optimizer: NoisyOptimizer, indices: np.ndarray,
                       options: TrainOptions) -> float:
        x, y = self._batch(indices)  # (m K, ...): each image's K copies side by side
        loss = self.trainer.task_loss(self.private(x), y, options)
        with warnings.catch_warnings():  # the images need no gradient; Opacus' hooks say so
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        optimizer.step()  # clip each image's gradient; at a logical batch's end, noise and step
        return float(loss.detach())

    def _batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t, k = self.trainer, self.plan.multiplicity
        x = t.preprocess(t.data.train.x[index])
        y = torch.from_numpy(t.data.train.y[index])
        if k > 1:  # K copies, each its own augmentation draw
            x, y = x.repeat_interleave(k, dim=0), y.repeat_interleave(k, dim=0)
        if t.augment is not None:
            x = t.augment(x)
        return x.to(t.device), y.to(t.device)

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.trainer.evaluate(state, split)
