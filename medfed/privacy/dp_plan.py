"""How a site trains under DP-SGD: the DP-friendly recipe and its defaults.

Non-private training wants small batches and many steps; DP-SGD does not. Every step adds noise of
norm about sigma C sqrt(d) to a sum of at most B clipped gradients, so the signal-to-noise of a
step grows with the batch B, and the accountant charges for steps, not for images. The defaults
below follow De et al. 2022 ("Unlocking high-accuracy differentially private image classification
through scale") and Tramer & Boneh 2021 ("Differentially private learning needs better features"):

- a large logical batch (Poisson sampling at q = logical_batch / n, what the accountant uses), cut
  into physical batches by Opacus' BatchMemoryManager so memory stays bounded;
- augmentation multiplicity: K augmented copies of each sampled image, whose gradients are
  averaged before the one clip of that image (same sensitivity C, so the same privacy);
- an average of the weights along the noisy steps (EMA), which is post-processing;
- a step size for the large batch.

Each field of [privacy] that is left unset takes the default here; any set field overrides it.
The figures that chose them are in benchmarks/RESULTS.md ("DP-SGD that costs little").
"""

from __future__ import annotations

from dataclasses import dataclass

from medfed.config_privacy import PrivacyConfig

LOGICAL_BATCH = 128  # images per noisy step (expected): noise / signal falls as 1 / B
PHYSICAL_BATCH = 256  # images (copies included) per forward pass: bounds memory, not privacy
# Off by default: measured on PneumoniaMNIST, K = 4 cost 4x the compute for no gain and the EMA
# lagged behind a round's few large steps (benchmarks/RESULTS.md); both stay one flag away.
MULTIPLICITY = 1  # augmented copies per image, averaged before clipping
EMA_DECAY = 0.0  # weight average along a round's noisy steps (with warm-up); 0: off
OPTIMIZER = "adam"
LR = 2e-3  # twice the non-private 1e-3: steps are fewer and their gradients cleaner
MOMENTUM = 0.9  # sgd only

@dataclass(frozen=True)
class DPPlan:
    """The resolved recipe one DP-SGD site trains with."""

    logical_batch: int
    physical_batch: int
    multiplicity: int
    ema_decay: float  # 0: the last iterate leaves the site
    optimizer: str
    lr: float
    momentum: float

    @property
    def physical_images(self) -> int:
        """Distinct images per forward pass: each comes with its K copies."""
        return max(1, self.physical_batch // self.multiplicity)

    def report(self) -> dict:
        return {"logical_batch": self.logical_batch, "physical_batch": self.physical_batch,
                "augment_multiplicity": self.multiplicity, "ema_decay": self.ema_decay,
                "optimizer": self.optimizer, "lr": self.lr, "momentum": self.momentum}


def dp_plan(p: PrivacyConfig, augment: bool) -> DPPlan:
    """The recipe of a run's [privacy] section: each unset field its DP-friendly default.
    Without augmentation there is nothing to multiply, so K is 1."""
    multiplicity = p.augment_multiplicity if p.augment_multiplicity is not None else MULTIPLICITY
    return DPPlan(
        logical_batch=p.logical_batch if p.logical_batch is not None else LOGICAL_BATCH,
        physical_batch=p.physical_batch if p.physical_batch is not None else PHYSICAL_BATCH,
        multiplicity=multiplicity if augment else 1,
        ema_decay=p.ema_decay if p.ema_decay is not None else EMA_DECAY,
        optimizer=p.dp_optimizer if p.dp_optimizer is not None else OPTIMIZER,
        lr=p.dp_lr if p.dp_lr is not None else LR,
        momentum=p.dp_momentum if p.dp_momentum is not None else MOMENTUM)
