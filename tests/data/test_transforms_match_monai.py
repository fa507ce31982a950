"""The plain-torch preprocessing and augmentation equal the MONAI transforms they replace, bit for
bit (data/transforms.py drops MONAI so that a run starts without importing it).

Hand mutations that make a test here fail: leave out the clip in scale_to_unit; resize with
mode="bilinear"; skip the row or column reversal in affine_warp; align_corners=False there."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from medfed.data.transforms import RandomAugment, affine_warp, area_resize, scale_to_unit

monai_transforms = pytest.importorskip("monai.transforms")
monai_layers = pytest.importorskip("monai.networks.layers")


@pytest.mark.parametrize("max_value", [255.0, 1.0, 4095.0, 0.0])
def test_scale_equals_monais_scale_intensity_range(max_value):
    x = torch.from_numpy(np.random.default_rng(0).uniform(-10, 5000, (3, 2, 9, 7))).float()
    monai = monai_transforms.ScaleIntensityRange(a_min=0.0, a_max=max_value, b_min=0.0, b_max=1.0,
                                                 clip=True)
    with pytest.warns(Warning) if max_value == 0 else nullcontext():
        expected = torch.as_tensor(monai(x))
    assert torch.equal(scale_to_unit(x, max_value), expected)


@pytest.mark.parametrize(("shape", "size"), [((2, 3, 28, 28), (16, 16)), ((2, 3, 20, 30), (32, 24)),
                                             ((2, 1, 12, 10, 8), (6, 6, 6))])
def test_area_resize_equals_monais_resize(shape, size):
    """As Preprocess used it: the batch viewed as B*C channels of one image."""
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, shape)).float()
    b, c = shape[:2]
    flat = monai_transforms.Resize(size, mode="area")(x.reshape(b * c, *shape[2:]))
    assert torch.equal(area_resize(x, size), torch.as_tensor(flat).reshape(b, c, *size))


@pytest.mark.parametrize("shape", [(5, 2, 24, 20), (3, 1, 10, 12, 14)])
def test_affine_warp_equals_monais_affine_transform(shape):
    x = torch.from_numpy(np.random.default_rng(2).uniform(0, 1, shape)).float()
    theta = torch.from_numpy(RandomAugment(len(shape) - 2, np.random.default_rng(3))
                             .matrices(shape[0])).float()
    monai = monai_layers.AffineTransform(normalized=True, mode="bilinear", padding_mode="zeros")
    expected = torch.as_tensor(monai(x, theta))
    assert torch.equal(affine_warp(x, theta), expected)

