"""Preprocessing: intensities to [0, 1], resize, and training-only augmentation.

Batches are transformed as a whole (B, C, *spatial), in plain torch: the three steps are exactly
what MONAI's ScaleIntensityRange (clipped), Resize (mode "area") and AffineTransform (normalized,
bilinear, zero padding) compute, the same operations in the same order (tests/data/
test_transforms.py checks equality with MONAI), without importing MONAI, which costs seconds at the
start of every run, site process and Ray worker. Augmentation draws one random affine per image and
applies them all in one grid_sample call (a per-image Compose of RandFlip/RandRotate/
RandSpatialCrop costs about 0.5 ms an image on 2 CPU cores, as much as training the default model
on it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional

MAX_ROTATION = math.radians(10)
MIN_CROP = 0.9  # random crop keeps 90-100% of the field of view, resized back
FLIP_P = 0.5


class Preprocess:
    """Deterministic steps: stored dtype -> float32 in [0, 1], then resize when asked."""

    def __init__(self, max_value: float | None, spatial_size: tuple[int, ...] | None) -> None:
        # None: tabular features, already imputed and scaled at their site; no intensity window.
        self.max_value = max_value
        self.spatial_size = tuple(spatial_size) if spatial_size else None

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).float()
        if self.max_value is not None:
            x = scale_to_unit(x, self.max_value)
        if self.spatial_size is not None and tuple(x.shape[2:]) != self.spatial_size:
            x = area_resize(x, self.spatial_size)
        return x


def scale_to_unit(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """[0, max_value] -> [0, 1], clipped: ScaleIntensityRange(0, max_value, 0, 1, clip=True)."""
    if max_value == 0:  # MONAI's answer to an empty window: shifted by a_min (0), not clipped
        return x
    return ((x - 0.0) / max_value * 1.0 + 0.0).clamp(0.0, 1.0)


def area_resize(x: torch.Tensor, spatial_size: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C, *spatial_size) by area averaging: MONAI's Resize(mode="area"),
    which is torch's interpolate in that mode (no aliasing when shrinking)."""
    return functional.interpolate(x, size=spatial_size, mode="area")


def affine_warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (B, C, *spatial) through (B, d, d+1) affines in normalized coordinates, indexed
    (i, j, k) as scipy's: MONAI's AffineTransform(normalized=True, mode="bilinear",
    padding_mode="zeros", align_corners=True). torch's affine_grid reads (x, y, z), the reverse
    order, so rows and the linear part's columns are reversed first."""
    d = x.dim() - 2
    reverse = list(range(d - 1, -1, -1))
    theta = theta[:, reverse]  # rows: output axes in torch's order
    theta = torch.cat([theta[:, :, reverse], theta[:, :, d:]], dim=2)  # columns: input axes
    grid = functional.affine_grid(theta, list(x.shape), align_corners=True)
    return functional.grid_sample(x.contiguous(), grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=True)


class RandomAugment:
    """Random flip of the left-right axis, rotation of +-10 degrees and crop, one draw per image.

    The generator is injected, so a site's augmentation stream is a function of its seed.
    """

    def __init__(self, spatial_dims: int, rng: np.random.Generator) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"augmentation needs 2D or 3D images, got {spatial_dims} spatial dims")
        self.spatial_dims = spatial_dims
        self.rng = rng

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.matrices(len(x)))

    def apply(self, x: torch.Tensor, matrices: np.ndarray) -> torch.Tensor:
        """Each image warped by its own affine (matrices[i] for x[i]), drawn by matrices()."""
        return affine_warp(x, torch.from_numpy(matrices).to(x.device, x.dtype))

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
