"""The site trainer: the only code that touches a site's images. The same class serves every
algorithm, the baselines, the simulation and (later) the deployed client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from medfed.client.predictor import Predictor, loss_for
from medfed.data.dataset import Samples, SiteData
from medfed.data.transforms import Preprocess, RandomAugment
from medfed.errors import DataError
from medfed.evaluation.metrics import compute_metrics
from medfed.types import CONTROL_PREFIX, Metrics, StateDict, Task, Update, split_control


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 1
    min_steps: int = 0  # at least this many optimizer steps: a short epoch is followed by more data
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx: (mu/2)||w - w_global||^2 added to the loss
    scaffold: bool = False  # SCAFFOLD: the model arrives with the server's control variate
    logit_adjust: float = 0.0  # tau: train on logits + tau * log(the site's label prior)
    # The round being trained (from 0). A site draws its data order and augmentation from (its seed,
    # the round), so a round run again (a resumed server, a retried round) trains exactly alike.
    round: int = 0


class LocalSite(Protocol):
    """What a transport needs of a site: SiteTrainer, or a simulated malicious site around one."""

    @property
    def site(self) -> str: ...

    def train(self, state: StateDict, options: TrainOptions) -> Update: ...

    def evaluate(self, state: StateDict, split: str) -> Metrics: ...


class SiteTrainer:
    def __init__(self, data: SiteData, model: nn.Module, task: Task, preprocess: Preprocess,
                 device: torch.device, seed: int, augment: bool) -> None:
        self.data = data
        self.model = model.to(device)  # one instance per site, loaded with each round's weights
        self.task = task
        self.preprocess = preprocess
        self.device = device
        self.seed = seed
        self.shuffle = torch.Generator().manual_seed(seed)
        spatial_dims = data.train.x.ndim - 2
        self.augment = (RandomAugment(spatial_dims, np.random.default_rng(seed))
                        if augment and spatial_dims in (2, 3) else None)
        self.loss_fn = loss_for(task)
        self.predictor = Predictor(self.model, task, preprocess, device)
        self.control: StateDict = {}  # SCAFFOLD's c_k: kept at the site from round to round
        # c_k after each round trained, so a round run again (a resumed server) starts from the
        # c_k it had the first time, not from what that first attempt made of it.
        self._controls: dict[int, StateDict] = {}
        self._log_prior: torch.Tensor | None = None  # logit adjustment: the labels never change

    @property
    def site(self) -> str:
        return self.data.site

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        self.reseed(options.round)
        state, server_control = split_control(state) if options.scaffold else (state, None)
        self.model.load_state_dict(state)
        self.model.train()
        if server_control is not None:
            earlier = [r for r in self._controls if r < options.round]
            self.control = dict(self._controls[max(earlier)]) if earlier else {}
        correction = self._correction(server_control) if server_control is not None else []
        total_loss, steps = self._local_steps(options, correction)
        state_out = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if server_control is not None:
            state_out |= self._next_control(state, state_out, server_control, steps, options.lr)
            self._controls = {r: c for r, c in self._controls.items() if r < options.round}
            self._controls[options.round] = dict(self.control)
        return Update(site=self.site, state=state_out, n_samples=len(self.data.train),
                      n_steps=steps, metrics={"train_loss": total_loss / max(steps, 1)})

    def reseed(self, round_index: int) -> None:
        """The round's data order and augmentation, a function of (seed, round) only."""
        mixed = np.random.SeedSequence([self.seed, round_index]).generate_state(2)
        self.shuffle = torch.Generator().manual_seed(int(mixed[0]))
        if self.augment is not None:
            self.augment.rng = np.random.default_rng(int(mixed[1]))

    def _local_steps(self, options: TrainOptions,
                     correction: list[tuple[nn.Parameter, torch.Tensor]]) -> tuple[float, int]:
        """options.epochs over the site's training split, then more passes until options.min_steps
        steps are done (stopping mid-pass); returns (sum of task losses, steps)."""
        optimizer = self.optimizer(options)
        anchor = self._anchor(options)
        total_loss, steps = 0.0, 0
        for index in round_batches(len(self.data.train), options, self.shuffle):
            x, y = self.build_batch(self.data.train, index, self.augmentation(len(index)))
            optimizer.zero_grad(set_to_none=True)
            task_loss = self.task_loss(self.model(x), y, options)
            loss = task_loss + self._proximal(anchor, options.proximal_mu) if anchor else task_loss
            loss.backward()
            for param, c_diff in correction:  # SCAFFOLD: g - c_k + c
                if param.grad is not None:
                    param.grad.add_(c_diff)
            optimizer.step()
            total_loss += float(task_loss.detach())  # comparable across algorithms
            steps += 1
        return total_loss, steps

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor, options: TrainOptions) -> torch.Tensor:
        """The training loss; with logit adjustment, softmax cross-entropy on logits shifted by
        tau * log(prior), so the model's own logits estimate the label-balanced posterior: a site
        holding mostly one class no longer pulls the federation toward that class."""
        if options.logit_adjust:
            if self._log_prior is None:  # once per site, not on every batch
                self._log_prior = self.log_prior(logits.shape[1]).to(logits)
            logits = logits + options.logit_adjust * self._log_prior
        return self.loss_fn(logits, y)

    def log_prior(self, n_classes: int) -> torch.Tensor:
        """log of this site's training label frequencies, add-one smoothed (a class the site never
        saw gets a finite, low prior). Computed from its own labels only; nothing leaves the site."""
        if self.task is Task.MULTILABEL:
            raise DataError("--logit-adjust needs single-label classes (binary, multiclass or "
                            "ordinal); this data set is multi-label")
        labels = np.asarray(self.data.train.y, dtype=np.int64).reshape(-1)
        counts = np.bincount(labels, minlength=n_classes) + 1.0
        return torch.from_numpy(np.log(counts / counts.sum()))

    def _correction(self, server_control: StateDict) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, c - c_k) for every trainable parameter; c_k starts at zero."""
        out = []
        for name, param in self.model.named_parameters():
            c = server_control[name].to(self.device)
            c_k = self.control.get(name, torch.zeros_like(server_control[name])).to(self.device)
            out.append((param, c - c_k))
        return out

    def _next_control(self, start: StateDict, end: StateDict, server_control: StateDict, steps: int,
                      lr: float) -> StateDict:
        """Option II: c_k+ = c_k - c + (x - y) / (K lr). Keeps c_k+, returns c_k+ - c_k (prefixed)."""
        changes = {}
        for name, c in server_control.items():
            c_k = self.control.get(name, torch.zeros_like(c))
            c_next = (c_k - c + (start[name] - end[name]) / (steps * lr)) if steps else c_k
            changes[CONTROL_PREFIX + name] = (c_next - c_k).to(c.dtype)
            self.control[name] = c_next
        return changes

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        samples = self.data.val if split == "val" else self.data.test
        if samples is None:
            raise DataError(f"site {self.site} has no {split} split")
        probs, loss = self.predictor.predict(state, samples)
        return {**compute_metrics(self.task, samples.y, probs), "loss": loss}

    def augmentation(self, n: int) -> np.ndarray | None:
        """The next n images' random affines from this site's augmentation stream (None when
        augmentation is off): drawn for a whole batch, so a worker that trains only a shard of it
        (client/sharded_trainer.py) consumes the stream exactly as this process does."""
        return self.augment.matrices(n) if self.augment is not None else None

    def build_batch(self, samples: Samples, index: np.ndarray, affines: np.ndarray | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at index, preprocessed and warped by their affines, on the device."""
        x = self.preprocess(samples.x[index])
        if self.augment is not None and affines is not None:
            x = self.augment.apply(x, affines)
        y = torch.from_numpy(samples.y[index])
        return x.to(self.device), y.to(self.device)

    def optimizer(self, options: TrainOptions) -> torch.optim.Optimizer:
        return build_optimizer(self.model.parameters(), options)

    def _anchor(self, options: TrainOptions) -> list[tuple[nn.Parameter, torch.Tensor]]:
        if not options.proximal_mu:
            return []
        return [(p, p.detach().clone()) for p in self.model.parameters()]

    @staticmethod
    def _proximal(anchor: list[tuple[nn.Parameter, torch.Tensor]], mu: float) -> torch.Tensor:
        return 0.5 * mu * sum(((p - p0) ** 2).sum() for p, p0 in anchor)


def round_batches(n: int, options: TrainOptions, order: torch.Generator) -> Iterator[np.ndarray]:
    """The index batches of one round over n samples: options.epochs shuffled passes, then more
    passes until options.min_steps batches are done (stopping mid-pass). One function for every
    trainer of a round, so a sharded worker walks the same global batches as SiteTrainer."""
    steps, passes, before = 0, 0, -1
    while (passes < options.epochs or steps < options.min_steps) and steps > before:
        passes, before = passes + 1, steps  # a pass that yields no batch ends the loop
        for index in batch_order(n, options.batch_size, order):
            if passes > options.epochs and steps >= options.min_steps:
                break
            yield index
            steps += 1


def batch_order(n: int, batch_size: int, order: torch.Generator) -> Iterator[np.ndarray]:
    """One shuffled pass over n samples in batches (the permutation drawn when the pass starts)."""
    if n == 0:
        return  # nothing to train on (torch would split an empty order into one empty batch)
    for index in torch.randperm(n, generator=order).split(batch_size):
        if len(index) == 1 < batch_size and n > 1:
            continue  # a lone sample breaks BatchNorm's batch statistics; it comes back next epoch
        yield index.numpy()


def build_optimizer(params: Iterable[nn.Parameter], options: TrainOptions) -> torch.optim.Optimizer:
    """The optimizer options name (a site's; split learning's server middle uses the same)."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                               weight_decay=options.weight_decay)
    return torch.optim.Adam(params, lr=options.lr, weight_decay=options.weight_decay)
