"""Aggregation mathematics: pure functions over state dicts keyed by name.

Weighted averaging streams: WeightedMean keeps one running sum, so the server's memory does not
grow with the number of sites. Integer tensors (BatchNorm's num_batches_tracked) are counters, not
weights: they are never averaged as floats; the aggregate keeps their maximum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from medfed.errors import IncompatibleUpdate
from medfed.types import StateDict


class WeightedMean:
    """Running sum of weight * state; result() = sum_k w_k x_k / sum_k w_k (McMahan et al. 2017, eq. 1
    of Algorithm 1's server step, with w_k = n_k)."""

    streams = True

    def __init__(self) -> None:
        self._sum: StateDict = {}
        self._total = 0.0
        self.count = 0

    @staticmethod
    def check_weight(weight: float) -> None:
        if not math.isfinite(weight) or weight <= 0:
            raise IncompatibleUpdate(f"aggregation weight must be finite and > 0, got {weight}")

    def add(self, state: StateDict, weight: float) -> None:
        self.check_weight(weight)
        if self.count == 0:
            self._sum = {k: _start(v, weight) for k, v in state.items()}
        else:
            if state.keys() != self._sum.keys():
                raise IncompatibleUpdate("updates to average have different keys")
            for key, value in state.items():
                _accumulate(self._sum[key], value, weight)
        self._total += weight
        self.count += 1

    @property
    def total(self) -> float:
        """The sum of the weights added so far (hierarchical.py weights a region by it)."""
        return self._total

    def notes(self) -> dict[str, list[int]]:
        return {}  # every update counts, none is changed

    def result(self) -> StateDict:
        if self.count == 0:
            raise ValueError("no updates to average")
        return {k: v.clone() if _is_counter(v) else v.div(self._total) for k, v in self._sum.items()}


def weighted_mean(states: Iterable[StateDict], weights: Iterable[float]) -> StateDict:
    mean = WeightedMean()
    for state, weight in zip(states, weights, strict=True):
        mean.add(state, weight)
    return mean.result()


def _start(value: torch.Tensor, weight: float) -> torch.Tensor:
    if _is_counter(value):
        return value.clone()
    return value.detach().to(torch.float64) * weight  # float64 sum: no drift over many sites


def _accumulate(total: torch.Tensor, value: torch.Tensor, weight: float) -> None:
    if _is_counter(total):
        torch.maximum(total, value, out=total)
    else:
        total.add_(value.detach().to(torch.float64), alpha=weight)


def _is_counter(value: torch.Tensor) -> bool:
    return not (value.is_floating_point() or value.is_complex())


def cast_like(state: StateDict, reference: StateDict) -> StateDict:
    """Back to the reference dtypes (the float64 sums above become float32 parameters again)."""
    return {k: v.to(reference[k].dtype) for k, v in state.items()}
