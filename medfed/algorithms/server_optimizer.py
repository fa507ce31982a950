"""Server optimizers: FedOpt (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Alg. 2)
and FedAvgM (Hsu et al., "Measuring the Effects of Non-Identical Data Distribution", 2019).

The averaged site update Delta = mean_k(x_k) - x is treated as a pseudo-gradient:
    m <- beta1 m + (1 - beta1) Delta
    v <- beta2 v + (1 - beta2) Delta^2                     (FedAdam)
    v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)         (FedYogi)
    x <- x + eta m / (sqrt(v) + tau)
FedAvgM, heavy-ball momentum on the same pseudo-gradient:
    m <- beta m + Delta
    x <- x + eta m
Only trainable parameters take this step; buffers (running statistics, counters) take the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from medfed.types import StateDict


class ServerOptimizer(Protocol):
    """A server step on the round's average; m and v are its state (kept in checkpoints)."""

    m: StateDict
    v: StateDict

    def step(self, current: StateDict, averaged: StateDict) -> StateDict: ...


@dataclass
class AdaptiveServerOptimizer:
    parameter_keys: frozenset[str]
    variant: str  # "adam" or "yogi"
    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: StateDict = field(default_factory=dict)  # first moment per parameter (its checkpoint)
    v: StateDict = field(default_factory=dict)  # second moment

    def step(self, current: StateDict, averaged: StateDict) -> StateDict:
        out = dict(averaged)
        for key in self.parameter_keys & averaged.keys():
            delta = averaged[key].to(torch.float64) - current[key].to(torch.float64)
            m = self.m.get(key, torch.zeros_like(delta))
            v = self.v.get(key, torch.full_like(delta, self.tau**2))  # v_{-1} = tau^2 (paper)
            m = self.beta1 * m + (1 - self.beta1) * delta
            v = self._second_moment(v, delta * delta)
            self.m[key], self.v[key] = m, v
            out[key] = current[key] + self.lr * m / (v.sqrt() + self.tau)
        return out

    def _second_moment(self, v: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:
        if self.variant == "yogi":
            return v - (1 - self.beta2) * delta2 * torch.sign(v - delta2)
        return self.beta2 * v + (1 - self.beta2) * delta2


@dataclass
class MomentumServerOptimizer:
    """FedAvgM: with eta = 1 and beta = 0 it is FedAvg; beta = 0.9 lets the direction the sites
    agree on round after round build up, as momentum does for SGD."""

    parameter_keys: frozenset[str]
    lr: float = 1.0
    beta: float = 0.9
    m: StateDict = field(default_factory=dict)  # the momentum buffer per parameter (its checkpoint)
    v: StateDict = field(default_factory=dict)  # unused: the checkpoint keeps one layout

    def step(self, current: StateDict, averaged: StateDict) -> StateDict:
        out = dict(averaged)
        for key in self.parameter_keys & averaged.keys():
            delta = averaged[key].to(torch.float64) - current[key].to(torch.float64)
            m = self.beta * self.m.get(key, torch.zeros_like(delta)) + delta
            self.m[key] = m
            out[key] = current[key] + self.lr * m
        return out
