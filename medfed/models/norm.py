"""The normalization layer is an explicit choice, named the same way for every network."""

from __future__ import annotations

import math

from torch import nn

from medfed.errors import ConfigError

GROUPS = 8


def monai_norm(norm: str, channels: int | None = None) -> str | tuple[str, dict]:
    """The `norm` argument MONAI's networks and blocks take; given the layer's channels, group
    norm takes as many groups (up to GROUPS) as divide them (a cnn of width 60: 4 groups)."""
    if norm == "batch":
        return "batch"
    if norm == "group":
        return ("group", {"num_groups": math.gcd(GROUPS, channels) if channels else GROUPS})
    if norm == "instance":
        return ("instance", {"affine": True})
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
