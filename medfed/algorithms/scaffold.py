"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, Algorithm 1 with option II).

The server keeps a control variate c, each site its own c_k (both start at zero). A site corrects
every local gradient by c - c_k, which removes the drift of its local optimum from the global one:

    site:   y <- y - eta_l (g_k(y) - c_k + c)                       for K local steps
            c_k+ = c_k - c + (x - y) / (K eta_l);  returns y and  delta_c_k = c_k+ - c_k
    server: x <- x + eta_g sum_k p_k (y_k - x)                      (eta_g = 1: the FedAvg mean)
            c <- c + (1/N) sum_{k in S} delta_c_k                   (N: all sites)

The site half lives in client/trainer.py. On the wire, c travels with the model and delta_c_k with
the update, under keys prefixed CONTROL_PREFIX, so the one safetensors message and the one update
check serve both. With c = c_k = 0 every round SCAFFOLD is FedAvg; with a single site c = c_k after
the first round and it stays FedAvg. The paper assumes SGD; with Adam the correction is added to
the gradient Adam sees and eta_l is the configured learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medfed.algorithms.checkpoint import Checkpoint
from medfed.algorithms.fedavg import FedAvg
from medfed.types import CONTROL_PREFIX, SiteId, StateDict, Update, split_control


class Scaffold(FedAvg):
    def __init__(self, initial: StateDict, parameter_keys: frozenset[str], sites: Sequence[SiteId]
                 ) -> None:
        super().__init__(initial, name="scaffold")
        self.train_overrides = {"scaffold": True}
        self.n_sites = len(sites)
        self.control: StateDict = {k: torch.zeros_like(initial[k]) for k in sorted(parameter_keys)}
        self.open_stage()

    def open_stage(self) -> None:
        super().open_stage()
        self._control_sum: StateDict = {}
        # One payload per stage: the same bytes go to every site (the transport encodes it once).
        self._payload = {**self._global,
                         **{CONTROL_PREFIX + k: v for k, v in self.control.items()}}

    def payload(self, site: SiteId) -> StateDict:
        return self._payload

    def receive(self, update: Update) -> None:
        model, control_change = split_control(update.state)
        super().receive(Update(update.site, model, update.n_samples, update.n_steps, update.metrics))
        for name, change in control_change.items():
            total = self._control_sum.get(name)
            change64 = change.to(torch.float64)
            self._control_sum[name] = change64 if total is None else total + change64

    def checkpoint(self) -> Checkpoint:
        return super().checkpoint().add("control/", self.control)

    def restore(self, checkpoint: Checkpoint) -> None:
        self.control = checkpoint.part("control/")
        super().restore(checkpoint)

    def close_stage(self) -> None:
        super().close_stage()
        self.control = {k: (c + self._control_sum[k] / self.n_sites).to(c.dtype)
                        if k in self._control_sum else c for k, c in self.control.items()}
