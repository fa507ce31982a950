"""The normalization layer is an explicit choice, named the same way for every network."""

from __future__ import annotations

import math

from torch import nn

from medfed.errors import ConfigError

GROUPS = 8


def monai_norm(norm: str) -> str | tuple[str, dict]:
    """The `norm` argument MONAI's networks and blocks take."""
    if norm == "batch":
        return "batch"
    if norm == "group":
        return ("group", {"num_groups": GROUPS})
    if norm == "instance":
        return ("instance", {"affine": True})
    raise ConfigError(f"unknown norm '{norm}'; valid: batch, group, instance")


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """The torch layer MONAI's blocks build from monai_norm(norm) for `channels` channels; group
    norm with as many groups (up to GROUPS) as divide the channels (a cnn of width 60: 4)."""
    if norm == "batch":
        return (nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 2](channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    if norm == "instance":
        return (nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 2](channels, affine=True)
    raise ConfigError(f"unknown norm '{norm}'; valid: batch, group, instance")


def enforce_norm(model: nn.Module, norm: str) -> nn.Module:
    """Make every normalization layer the one asked for.

    MONAI 1.6's ResNet applies its `norm` argument to the stem only; its residual blocks keep
    BatchNorm (Project-MONAI/MONAI PR #9028). Since the user chose the norm explicitly, each
    BatchNorm left over is replaced by the same-width layer of that kind.
    """
    if norm == "batch":
        return model
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, _norm_like(child, norm))
        else:
            enforce_norm(child, norm)
    return model


def _norm_like(layer: nn.modules.batchnorm._BatchNorm, norm: str) -> nn.Module:
    channels = layer.num_features
    if norm == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    instance = {nn.BatchNorm1d: nn.InstanceNorm1d, nn.BatchNorm2d: nn.InstanceNorm2d,
                nn.BatchNorm3d: nn.InstanceNorm3d}[type(layer)]
    return instance(channels, affine=True)
