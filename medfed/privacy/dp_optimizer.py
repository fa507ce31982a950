"""DP-SGD's step, read like the pseudocode (Abadi et al. 2016, Algorithm 1, with augmentation
multiplicity of De et al. 2022, section 3.1): for each sampled image, average the gradients of its
K augmented copies; clip that one gradient to norm C; sum over the logical batch; add
N(0, sigma^2 C^2); divide by the expected batch size.

Averaging before the clip is what keeps the privacy: an image, with all its copies, moves the sum
by at most C, as without copies. Clipping each copy (a copy is not an image) would let one image
move the sum by up to K C.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from medfed.privacy.noise import Randomness


class NoisyOptimizer(DPOptimizer):
    """Opacus' DPOptimizer (clip each sample's gradient, sum, add noise, scale) with the noise
    drawn from a privacy/noise.py source instead of a torch.Generator, and the K copies of each
    image folded into one per-image gradient before the clip.

    The rows of a physical batch hold each image's copies next to each other: image i is rows
    i K ... i K + K - 1 (torch.repeat_interleave)."""

    def __init__(self, optimizer: torch.optim.Optimizer, noise: Randomness, multiplicity: int = 1,
                 **kwargs: object) -> None:
        super().__init__(optimizer, **kwargs)  # type: ignore[arg-type]
        self.noise_source = noise
        self.multiplicity = multiplicity

    def clip_and_accumulate(self) -> None:
        if self.multiplicity > 1:
            for p in self.params:
                g = self._get_flat_grad_sample(p)  # (m K, *p.shape)
                m = len(g) // self.multiplicity
                p.grad_sample = g.view(m, self.multiplicity, *g.shape[1:]).mean(dim=1)  # (m, ...)
        super().clip_and_accumulate()  # one clip per image, summed into p.summed_grad

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.summed_grad
            _check_processed_flag(summed)  # a clipped sum is never noised (released) twice
            noise = (self.noise_source.normal(tuple(summed.shape), std, summed.dtype).to(summed.device)
                     if std else torch.zeros_like(summed))
            p.grad = (summed + noise).view_as(p)
            _mark_as_processed(summed)

    def release_noise_only(self) -> None:
        """A logical batch that sampled no image still releases a step: the noise alone, as
        Opacus does. (Skipping it would tell whoever reads the weights that the batch was empty,
        which the accountant does not cover.)"""
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self.step()
