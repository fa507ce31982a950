"""Faulty and malicious sites, for measuring what an aggregator withstands (simulation only).

An attack sits where a compromised hospital would put it: at the site, around the honest trainer,
before the update is encoded. The server sees only what a real attacker could send.

| kind        | what the site sends                                                        |
|-------------|----------------------------------------------------------------------------|
| label-flip  | an honest update trained on flipped labels (data poisoning)                |
| scale:F     | x + F (x_k - x): its change scaled by F (a negative F also flips its sign) |
| sign-flip   | x - (x_k - x): its change reversed                                         |
| noise[:S]   | x + N(0, S^2) per coordinate, no training at all (S = 1 by default)        |
| nan         | a model full of NaN (a broken pipeline); the server's check rejects it     |
| free-ride   | the global model back unchanged, claiming its sample count                 |

Only floating-point tensors are changed; counters stay as trained. Label flipping maps class c to
C - 1 - c (for binary tasks, 0 <-> 1) and, for multi-label tasks, every finding to its absence.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from medfed.client.attack_spec import Attack, AttackKind
from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.data.dataset import Samples, SiteData
from medfed.types import CONTROL_PREFIX, Metrics, StateDict, Task, Update


def tamper(attack: Attack, sent: StateDict, honest: StateDict, generator: torch.Generator
           ) -> StateDict:
    """What the malicious site sends instead of `honest`, given the model it was `sent`."""
    out = dict(honest)
    for key, value in honest.items():
        if value.is_floating_point() and not key.startswith(CONTROL_PREFIX):
            out[key] = _tamper_tensor(attack, sent[key], value, generator)
    return out


def _tamper_tensor(attack: Attack, start: torch.Tensor, trained: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    if attack.kind is AttackKind.SCALE:
        return start + attack.factor * (trained - start)
    if attack.kind is AttackKind.SIGN_FLIP:
        return start - (trained - start)
    if attack.kind is AttackKind.NOISE:
        noise = torch.randn(start.shape, generator=generator, dtype=torch.float32)
        return start + (attack.factor * noise).to(start.dtype)
    if attack.kind is AttackKind.NAN:
        return torch.full_like(trained, float("nan"))
    if attack.kind is AttackKind.FREE_RIDE:
        return start.clone()
    return trained  # label-flip: the update is honest, the labels were not


def flip_labels(samples: Samples, task: Task, num_classes: int) -> Samples:
    """The site's training labels, flipped (see the module docstring)."""
    if task is Task.MULTILABEL:
        return Samples(samples.x, (1 - samples.y).astype(samples.y.dtype))
    return Samples(samples.x, (num_classes - 1 - samples.y).astype(samples.y.dtype))


def poisoned_data(data: SiteData, task: Task, num_classes: int) -> SiteData:
    """A label-flipping site trains on flipped labels; its validation split stays as it is."""
    return replace(data, train=flip_labels(data.train, task, num_classes))


class MaliciousSite:
    """An honest SiteTrainer behind an attack: trains (unless the attack does not bother), then
    sends the tampered update. Scoring stays honest: the attack is on the model, not the metrics."""

    def __init__(self, trainer: SiteTrainer, attack: Attack, seed: int) -> None:
        self.trainer = trainer
        self.attack = attack
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def site(self) -> str:
        return self.trainer.site

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        if self.attack.kind in (AttackKind.NOISE, AttackKind.FREE_RIDE):
            # No computation at all (the point of a free rider), yet it claims a full round's work.
            n = len(self.trainer.data.train)
            claimed_steps = max(math.ceil(n / options.batch_size) * options.epochs,
                                options.min_steps)
            honest = Update(self.site, state, n, claimed_steps)
        else:
            honest = self.trainer.train(state, options)
        tampered = tamper(self.attack, state, honest.state, self.generator)
        return replace(honest, state=tampered)

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.trainer.evaluate(state, split)
