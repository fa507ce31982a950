"""Aggregators: how a stage's site models become one model. The FedAvg family takes any of them.

| name         | rule                                          | streams    | weights       |
|--------------|-----------------------------------------------|------------|---------------|
| mean         | sum_k n_k x_k / sum_k n_k (FedAvg)            | yes        | sample counts |
| norm-bound   | the mean of updates clipped to norm M         | if M given | sample counts |
| median       | coordinate-wise median                        | no         | none          |
| trimmed-mean | coordinate-wise mean without f lowest/highest | no         | none          |
| krum         | the single most central update                | no         | none          |
| multi-krum   | the mean of the m most central updates        | no         | none          |

A streaming aggregator keeps one running sum, so the server's memory does not grow with the number
of sites; the others hold every update of the stage until it closes. Robust rules ignore the sample
counts on purpose: a malicious site could claim any count. Norm bounding streams when M is given;
by default M is the median update norm of the stage, which needs every update first. After
result(), notes() names (by the order of add) the updates Krum left out and those norm bounding
clipped, for the round's record.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from medfed.algorithms import robust
from medfed.algorithms.aggregate import WeightedMean
from medfed.registry import Registry
from medfed.types import StateDict


class Aggregator(Protocol):
    streams: bool  # False: holds every update of the stage until result()
    count: int

    def add(self, state: StateDict, weight: float) -> None: ...

    def result(self) -> StateDict: ...

    def notes(self) -> Notes: ...


Notes = dict[str, list[int]]  # e.g. {"left_out": [0], "clipped": [0, 3]}: indices in order of add
# A buffered rule: all of a stage's states and weights -> the aggregate and its notes.
Combine = Callable[[list[StateDict], list[float]], tuple[StateDict, Notes]]


@dataclass(frozen=True)
class RobustSettings:
    byzantine: int = 1  # f: the faulty sites to tolerate (Krum, trimmed mean)
    krum_keep: int | None = None  # m for Multi-Krum; None: n - f
    norm_bound: float | None = None  # M; None: the median norm of the stage's updates


# Builds a fresh aggregator for one stage; `reference` is the model the sites started from.
AggregatorFactory = Callable[[StateDict], Aggregator]


class Buffered:
    """Holds the stage's updates and applies a pure function of all of them when the stage closes."""

    streams = False

    def __init__(self, combine: Combine) -> None:
        self._combine = combine
        self._states: list[StateDict] = []
        self._weights: list[float] = []
        self._notes: Notes = {}

    @property
    def count(self) -> int:
        return len(self._states)

    def add(self, state: StateDict, weight: float) -> None:
        WeightedMean.check_weight(weight)
        self._states.append(state)
        self._weights.append(weight)

    def result(self) -> StateDict:
        if not self._states:
            raise ValueError("no updates to aggregate")
        state, self._notes = self._combine(self._states, self._weights)
        return state

    def notes(self) -> Notes:
        return self._notes


class ClippedMean:
    """The sample-weighted mean of updates each clipped to norm `bound` around the reference."""

    streams = True

    def __init__(self, reference: StateDict, bound: float) -> None:
        self._reference = reference
        self._bound = bound
        self._mean = WeightedMean()
        self._clipped: list[int] = []

    @property
    def count(self) -> int:
        return self._mean.count

    def add(self, state: StateDict, weight: float) -> None:
        clipped = robust.clip_to_norm(state, self._reference, self._bound)
        if clipped is not state:
            self._clipped.append(self._mean.count)
        self._mean.add(clipped, weight)

    def result(self) -> StateDict:
        return self._mean.result()

    def notes(self) -> Notes:
        return {"clipped": list(self._clipped)} if self._clipped else {}


def _mean(states: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    mean = WeightedMean()
    for state, weight in zip(states, weights, strict=True):
        mean.add(state, weight)
    return mean.result()


def _coordinatewise(rule: Callable[[list[StateDict]], StateDict]) -> AggregatorFactory:
    return lambda reference: Buffered(lambda states, weights: (rule(states), {}))


def _multi_krum(settings: RobustSettings, keep_one: bool) -> AggregatorFactory:
    def combine(states: list[StateDict], weights: list[float]) -> tuple[StateDict, Notes]:
        keep = 1 if keep_one else settings.krum_keep or len(states) - settings.byzantine
        chosen = robust.krum_select(states, settings.byzantine, keep)
        left_out = sorted(set(range(len(states))) - set(chosen))
        return _mean([states[i] for i in chosen], [1.0] * len(chosen)), {"left_out": left_out}
    return lambda reference: Buffered(combine)


def _norm_bound(settings: RobustSettings) -> AggregatorFactory:
    if settings.norm_bound is not None:
        return lambda reference: ClippedMean(reference, settings.norm_bound)  # type: ignore[arg-type]

    def factory(reference: StateDict) -> Aggregator:
        def combine(states: list[StateDict], weights: list[float]) -> tuple[StateDict, Notes]:
            # An adaptive bound: no honest site is clipped much, one outlier cannot move it far.
            bound = statistics.median(robust.update_norm(s, reference) for s in states)
            clipped = [robust.clip_to_norm(s, reference, bound) for s in states]
            notes = {"clipped": [i for i, (a, b) in enumerate(zip(clipped, states, strict=True))
                                 if a is not b]}
            return _mean(clipped, weights), notes if notes["clipped"] else {}
        return Buffered(combine)
    return factory


AGGREGATORS: Registry[Callable[[RobustSettings], AggregatorFactory]] = Registry("aggregator", {
    "mean": lambda s: lambda reference: WeightedMean(),
    "median": lambda s: _coordinatewise(robust.coordinate_median),
    "trimmed-mean": lambda s: _coordinatewise(lambda states: robust.trimmed_mean(states, s.byzantine)),
    "krum": lambda s: _multi_krum(s, keep_one=True),
    "multi-krum": lambda s: _multi_krum(s, keep_one=False),
    "norm-bound": _norm_bound,
})


def build_aggregator(name: str, settings: RobustSettings) -> AggregatorFactory:
    return AGGREGATORS[name](settings)
