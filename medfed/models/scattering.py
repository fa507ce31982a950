"""ScatterNet: a fixed wavelet scattering transform and a small trainable CNN on its output.

Tramer & Boneh (ICLR 2021, "Differentially private learning needs better features") show that
under DP-SGD a network on scattering coefficients beats one trained end to end: the scattering
features are not learned, so they cost no privacy budget, and the trainable part is small, so the
noise DP-SGD adds (its norm grows with the square root of the parameter count) drowns less
signal. Their recipe: scattering of depth 2 (J = 2, L = 8: 81 coefficients per input channel at a
quarter of the resolution), group normalization of the coefficients, then a small CNN.

The filters (kymatio's buffers) are rebuilt from the image size and are never part of the model's
state: they do not travel with updates, and no aggregator averages them.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

J = 2  # scales: 2^J down-sampling
ANGLES = 8
COEFFICIENTS = 1 + J * ANGLES + ANGLES ** 2 * J * (J - 1) // 2  # 81 per input channel
CACHE_BYTES = 512 * 2 ** 20  # cached coefficients (16 KB per 28x28 image: 32k images)
GROUPS = 27  # Tramer & Boneh's group norm over the coefficients (81 = 27 groups of 3)


class ScatterNet(nn.Module):
    def __init__(self, in_channels: int, num_outputs: int, size: tuple[int, int], width: int) -> None:
        super().__init__()
        # kymatio.torch also loads its 3D part, which needs scipy.special.sph_harm (gone from
        # SciPy 1.17): the 2D front end alone.
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D as Scattering2D

        self.scattering = Scattering2D(J=J, shape=size, L=ANGLES)
        # Fixed filters: kept out of state_dict (not sent, not averaged, not checkpointed).
        self.scattering._non_persistent_buffers_set.update(name for name, _ in
                                                           self.scattering.named_buffers())
        self._cache: dict[bytes, torch.Tensor] = {}
        self._overflow: dict[bytes, torch.Tensor] = {}  # this batch's images past the cap
        self._cached_bytes = 0
        channels = COEFFICIENTS * in_channels
        self.norm = nn.GroupNorm(GROUPS, channels, affine=False)
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(2 * width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_outputs)
        s = self.coefficients(x).flatten(1, 2)  # (B, C, 81, H/4, W/4) -> (B, 81 C, H/4, W/4)
        return self.head(self.features(self.norm(s)).flatten(1))

    @torch.no_grad()  # a fixed transform: no gradient flows into the input
    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """The scattering of each image, computed once per distinct image: the transform is
        fixed and costs more than the CNN's step, and a site sees the same images every epoch
        (augmented images differ, and are scattered anew)."""
        keys = [hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest()
                for image in x.detach().cpu()]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            fresh = self.scattering(x[missing].contiguous())
            for i, coefficients in zip(missing, fresh, strict=True):
                if self._cached_bytes < CACHE_BYTES:
                    self._cached_bytes += coefficients.numel() * coefficients.element_size()
                    self._cache[keys[i]] = coefficients
                else:
                    self._overflow[keys[i]] = coefficients
        found = [self._cache.get(key, self._overflow.get(key)) for key in keys]
        self._overflow.clear()
        return torch.stack(found).to(x.device)
