"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020, eq. 6-7).

Sites with more data take more local steps per round, and plain FedAvg then drifts towards their
objective. FedNova normalizes each site's change by its number of local steps before averaging:

    d_k   = (x - x_k) / a_k                        the site's normalized change
    x    <- x - tau_eff * sum_k p_k d_k,           tau_eff = sum_k p_k a_k,  p_k = n_k / n

a_k = ||a_k||_1 is the sum of the site's step coefficients: tau_k for plain SGD,
(tau_k - rho (1 - rho^tau_k) / (1 - rho)) / (1 - rho) for SGD with momentum rho (the paper's
Section 4). Adam has no such closed form; tau_k is used there. When every site takes the same
number of steps, a_k is the same for all and FedNova is FedAvg (x <- sum_k p_k x_k).

Only trainable parameters are normalized; buffers (running statistics, counters) take FedAvg's mean.
Everything streams: two running sums, whatever the number of sites.
"""

from __future__ import annotations

import torch

from medfed.algorithms.aggregate import WeightedMean, cast_like
from medfed.algorithms.fedavg import FedAvg
from medfed.types import StateDict, Update


def step_norm(steps: int, momentum: float = 0.0) -> float:
    """||a||_1 of the local step coefficients of `steps` SGD steps with heavy-ball momentum."""
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


class FedNova(FedAvg):
    def __init__(self, initial: StateDict, parameter_keys: frozenset[str], momentum: float = 0.0
                 ) -> None:
        super().__init__(initial, name="fednova")
        self.parameter_keys = parameter_keys
        self.momentum = momentum  # 0 for plain SGD and for Adam (see the module docstring)
        self.open_stage()

    def open_stage(self) -> None:
        self._changes = WeightedMean()  # sum_k p_k d_k over parameters
        self._buffers = WeightedMean()  # sum_k p_k x_k over buffers
        self._weighted_norms = 0.0  # sum_k n_k a_k
        self._samples = 0

    def receive(self, update: Update) -> None:
        a = step_norm(update.n_steps, self.momentum)
        if a <= 0:
            return  # a site that took no step changed nothing; it carries no direction to normalize
        x = self._global
        change = {k: (x[k].to(torch.float64) - v.to(torch.float64)) / a
                  for k, v in update.state.items() if k in self.parameter_keys}
        buffers = {k: v for k, v in update.state.items() if k not in self.parameter_keys}
        self._changes.add(change, update.n_samples)
        if buffers:
            self._buffers.add(buffers, update.n_samples)
        self._weighted_norms += update.n_samples * a
        self._samples += update.n_samples
        self._trained.add(update.site)

    def close_stage(self) -> None:
        if self._changes.count == 0:
            return
        tau_eff = self._weighted_norms / self._samples
        direction = self._changes.result()
        new = {k: self._global[k].to(torch.float64) - tau_eff * d for k, d in direction.items()}
        if self._buffers.count:
            new |= self._buffers.result()
        self._global = {**self._global, **cast_like(new, self._global)}
