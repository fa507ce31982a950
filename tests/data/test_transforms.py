"""Preprocessing (scale, resize) and the seeded training augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medfed.data.transforms import MAX_ROTATION, MIN_CROP, Preprocess, RandomAugment


def test_uint8_is_scaled_to_unit_float():
    batch = np.arange(0, 256, dtype=np.uint8).reshape(4, 1, 8, 8)
    x = Preprocess(255.0, None)(batch)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert x.shape == (4, 1, 8, 8)
    torch.testing.assert_close(x, torch.from_numpy(batch).float() / 255)


def test_values_above_the_maximum_are_clipped():
    batch = np.array([0.0, 0.5, 1.0, 2.0], np.float32).reshape(1, 1, 2, 2)
    x = Preprocess(1.0, None)(batch)
    assert x.flatten().tolist() == [0.0, 0.5, 1.0, 1.0]


def test_resize_2d_keeps_batch_and_channels_apart():
    batch = np.zeros((2, 3, 28, 28), np.uint8)
    for b in range(2):
        for c in range(3):
            batch[b, c] = 10 * (3 * b + c)  # each image channel a different constant
    x = Preprocess(255.0, (16, 16))(batch)
    assert x.shape == (2, 3, 16, 16)
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(x[b, c], torch.full((16, 16), 10 * (3 * b + c) / 255))


def test_resize_3d():
    batch = np.full((2, 1, 12, 12, 12), 255, np.uint8)
    x = Preprocess(255.0, (8, 8, 8))(batch)
    assert x.shape == (2, 1, 8, 8, 8)
    torch.testing.assert_close(x, torch.ones(2, 1, 8, 8, 8))


def test_no_resize_when_already_the_asked_size():
    batch = np.random.default_rng(0).integers(0, 256, (2, 1, 16, 16), dtype=np.uint8)
    torch.testing.assert_close(Preprocess(255.0, (16, 16))(batch), Preprocess(255.0, None)(batch))


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_keeps_shape_and_dtype(dims):
    x = torch.rand(3, 2, *(12,) * dims)
    y = RandomAugment(dims, np.random.default_rng(0))(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(x, y)


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_is_a_function_of_its_generator(dims):
    x = torch.rand(4, 1, *(10,) * dims)
    a = RandomAugment(dims, np.random.default_rng(5))(x)
    b = RandomAugment(dims, np.random.default_rng(5))(x)
    c = RandomAugment(dims, np.random.default_rng(6))(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_augmentation_needs_image_dimensions():
    with pytest.raises(ValueError, match="2D or 3D"):
        RandomAugment(1, np.random.default_rng(0))


@pytest.mark.parametrize("dims", [2, 3])
def test_affines_are_small_rotations_zooms_and_flips_inside_the_image(dims):
    m = RandomAugment(dims, np.random.default_rng(0)).matrices(400)
    assert m.shape == (400, dims, dims + 1)
    linear, shift = m[:, :, :dims], m[:, :, dims]
    det = np.linalg.det(linear)
    # |det| = zoom^d with zoom in [MIN_CROP, 1]; a flip makes it negative about half the time
    assert np.all(np.abs(det) <= 1 + 1e-9) and np.all(np.abs(det) >= MIN_CROP**dims - 1e-9)
    flips = int((det < 0).sum())
    assert 140 <= flips <= 260
    room = np.clip(1 - np.abs(linear).sum(axis=2), 0, None)
    assert np.all(np.abs(shift) <= room + 1e-12)
    if dims == 2:  # the rotation angle, once zoom and flip are divided out
        zoom = np.sqrt(np.abs(det))
        unflipped = linear.copy()
        unflipped[det < 0, :, -1] *= -1
        angles = np.arctan2(unflipped[:, 1, 0], unflipped[:, 0, 0])
        assert np.all(np.abs(angles) <= MAX_ROTATION + 1e-9)
        np.testing.assert_allclose(np.hypot(unflipped[:, 0, 0], unflipped[:, 1, 0]), zoom)
        assert np.abs(angles).max() > math.radians(5)  # the full range is used
