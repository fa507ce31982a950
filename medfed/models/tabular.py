"""Models for tabular rows (N, F): logistic regression and a small MLP."""

from __future__ import annotations

from torch import nn

from medfed.errors import ConfigError

HIDDEN = (32, 16)


def mlp(in_features: int, num_outputs: int, norm: str) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for hidden in HIDDEN:
        layers += [nn.Linear(width, hidden), _norm1d(norm, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_outputs))


def logistic(in_features: int, num_outputs: int) -> nn.Module:
    return nn.Linear(in_features, num_outputs)


def _norm1d(norm: str, width: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "group":
        return nn.GroupNorm(4, width)
    raise ConfigError(f"--model mlp takes --norm batch or group, not {norm}")
