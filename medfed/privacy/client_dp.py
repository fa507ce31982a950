"""Client-level differential privacy: DP-FedAvg (McMahan et al., "Learning Differentially Private
Recurrent Language Models", ICLR 2018, Algorithm 1 with the fixed-denominator estimator).

Each site's update Delta_k = x_k - x is clipped to norm S; the server adds N(0, (sigma S)^2) to every
coordinate of the sum of the m clipped updates of the round and divides by m:

    x <- x + (sum_k clip(Delta_k, S) + N(0, sigma^2 S^2 I)) / m

Adding or removing one site changes the sum by at most S, so each round is a Gaussian mechanism
with noise multiplier sigma; with sites sampled at rate q = m / N the rounds compose under the RDP
accountant of the subsampled Gaussian (Mironov et al. 2019; Opacus' RDPAccountant). Sites get equal
weights: a sample-count weight would let one large site exceed the sensitivity S. medfed samples a
fixed number of sites per round, not each site independently, so for q < 1 the Poisson-sampling
accountant is an approximation; with fraction = 1 (q = 1, no amplification) it is exact.

As an aggregator it wraps the FedAvg family (composition, not a subclass); under secure aggregation
the sites clip their own updates and the server adds the noise to the unmasked sum (secure_round.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from medfed.algorithms.aggregate import WeightedMean
from medfed.algorithms.aggregators import AggregatorFactory, Notes
from medfed.privacy.noise import Randomness
from medfed.types import StateDict

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant


def new_accountant() -> RDPAccountant:
    """Opacus' RDP accountant; Opacus loads only when a run asks for client-level DP."""
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


def float_keys(state: StateDict) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def clip_delta(state: StateDict, reference: StateDict, bound: float) -> tuple[StateDict, bool]:
    """(Delta * min(1, S / ||Delta||) in float64 over the float tensors, whether it was clipped)."""
    delta = {k: state[k].to(torch.float64) - reference[k].to(torch.float64) for k in float_keys(state)}
    norm = float(sum(d.square().sum() for d in delta.values())) ** 0.5
    if norm <= bound:
        return delta, False
    return {k: d * (bound / norm) for k, d in delta.items()}, True


def gaussian_noise(like: StateDict, std: float, noise: Randomness) -> StateDict:
    """N(0, std^2) per coordinate, float64, from an injected source. Drawn in sorted key order: a
    state that came over the wire (safetensors stores keys sorted) and the same state in process
    (module order) get the same noise from the same seeded source."""
    return {k: noise.normal(tuple(like[k].shape), std, torch.float64) for k in sorted(like)}


@dataclass
class ClientDP:
    """DP-FedAvg's settings, its noise source and the federation's accountant (thin state)."""

    clip: float  # S
    noise_multiplier: float  # sigma
    sample_rate: float  # q: the share of sites sampled per round (k / N, see server/sampling.py)
    noise: Randomness  # seeded in simulation; OS entropy in a deployment (privacy/noise.py)
    accountant: RDPAccountant = field(default_factory=new_accountant)

    @property
    def std(self) -> float:
        return self.noise_multiplier * self.clip

    def record_round(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def epsilon(self, delta: float) -> float:
        if not self.accountant.history:
            return 0.0
        return self.accountant.get_epsilon(delta) if self.noise_multiplier > 0 else math.inf

    @property
    def rounds(self) -> int:
        """Rounds accounted (Opacus merges identical steps into one history entry with a count)."""
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def aggregator(self) -> AggregatorFactory:
        return lambda reference: ClippedNoisyMean(reference, self)


class ClippedNoisyMean:
    """The aggregator: streams the sum of clipped updates, adds the noise once at result()."""

    streams = True

    def __init__(self, reference: StateDict, dp: ClientDP) -> None:
        self._reference = reference
        self._dp = dp
        self._sum: StateDict = {}
        self._counters = WeightedMean()  # integer buffers keep their maximum, as in FedAvg
        self._clipped: list[int] = []
        self.count = 0

    def add(self, state: StateDict, weight: float) -> None:
        WeightedMean.check_weight(weight)  # the weight itself is ignored: equal weights (above)
        delta, clipped = clip_delta(state, self._reference, self._dp.clip)
        if clipped:
            self._clipped.append(self.count)
        for k, d in delta.items():
            self._sum[k] = self._sum[k] + d if k in self._sum else d
        counters = {k: v for k, v in state.items() if not v.is_floating_point()}
        if counters:
            self._counters.add(counters, 1.0)
        self.count += 1

    def result(self) -> StateDict:
        if self.count == 0:
            raise ValueError("no updates to aggregate")
        noise = gaussian_noise(self._sum, self._dp.std, self._dp.noise)
        self._dp.record_round()
        out = {k: self._reference[k].to(torch.float64) + (s + noise[k]) / self.count
               for k, s in self._sum.items()}
        return out | (self._counters.result() if self._counters.count else {})

    def notes(self) -> Notes:
        return {"clipped": list(self._clipped)} if self._clipped else {}

