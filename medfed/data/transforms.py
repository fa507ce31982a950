"""Preprocessing with MONAI: intensities to [0, 1], resize, and training-only augmentation.

Batches are transformed as a whole (B, C, *spatial): MONAI's array transforms are channel-first,
so a batch is viewed as B*C channels for the deterministic steps, and augmentation draws one random
affine per image and applies them all in one call of MONAI's AffineTransform (a per-image
Compose of RandFlip/RandRotate/RandSpatialCrop costs about 0.5 ms an image on 2 CPU cores, as much
as training the default model on it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import set_track_meta
from monai.networks.layers import AffineTransform
from monai.transforms import Resize, ScaleIntensityRange

set_track_meta(False)  # plain tensors: metadata tracking only slows batches down here

MAX_ROTATION = math.radians(10)
MIN_CROP = 0.9  # random crop keeps 90-100% of the field of view, resized back
FLIP_P = 0.5


class Preprocess:
    """Deterministic steps: stored dtype -> float32 in [0, 1], then resize when asked."""

    def __init__(self, max_value: float | None, spatial_size: tuple[int, ...] | None) -> None:
        # None: tabular features, already imputed and scaled at their site; no intensity window.
        self.scale = (ScaleIntensityRange(a_min=0.0, a_max=max_value, b_min=0.0, b_max=1.0, clip=True)
                      if max_value is not None else None)
        self.resize = Resize(spatial_size, mode="area") if spatial_size else None

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).float()
        if self.scale is not None:
            x = self.scale(x)
        if self.resize is not None and tuple(x.shape[2:]) != tuple(self.resize.spatial_size):
            b, c = x.shape[:2]
            x = self.resize(x.reshape(b * c, *x.shape[2:]))
            x = torch.as_tensor(x).reshape(b, c, *x.shape[1:])
        return x


class RandomAugment:
    """Random flip of the left-right axis, rotation of +-10 degrees and crop, one draw per image.

    The generator is injected, so a site's augmentation stream is a function of its seed.
    """

    def __init__(self, spatial_dims: int, rng: np.random.Generator) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"augmentation needs 2D or 3D images, got {spatial_dims} spatial dims")
        self.spatial_dims = spatial_dims
        self.rng = rng
        self.warp = AffineTransform(normalized=True, mode="bilinear", padding_mode="zeros")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.matrices(len(x)))

    def apply(self, x: torch.Tensor, matrices: np.ndarray) -> torch.Tensor:
        """Each image warped by its own affine (matrices[i] for x[i]), drawn by matrices()."""
        return self.warp(x, torch.from_numpy(matrices).to(x.device, x.dtype))

    def matrices(self, n: int) -> np.ndarray:
        """(n, d, d+1) affines in normalized coordinates: output point -> input point."""
        d = self.spatial_dims
        out = np.zeros((n, d, d + 1))
        for i in range(n):
            linear = self._rotation() * self.rng.uniform(MIN_CROP, 1.0)  # zoom in = crop
            if self.rng.random() < FLIP_P:
                linear[:, -1] *= -1  # mirror the last (left-right) axis
            room = 1 - np.abs(linear).sum(axis=1)  # shift the crop window within the image
            out[i, :, :d] = linear
            out[i, :, d] = self.rng.uniform(-1, 1, d) * np.clip(room, 0, None)
        return out

    def _rotation(self) -> np.ndarray:
        if self.spatial_dims == 2:
            a = self.rng.uniform(-MAX_ROTATION, MAX_ROTATION)
            return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        rotation = np.eye(3)
        for axes in ((0, 1), (0, 2), (1, 2)):
            a = self.rng.uniform(-MAX_ROTATION, MAX_ROTATION)
            r = np.eye(3)
            r[np.ix_(axes, axes)] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
            rotation = rotation @ r
        return rotation
