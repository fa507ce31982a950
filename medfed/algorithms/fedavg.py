"""FedAvg and the algorithms that only change its site loss or its server step.

- FedAvg (McMahan et al., AISTATS 2017, Algorithm 1): x <- sum_k (n_k / n) x_k over this round's sites.
- FedProx (Li et al., MLSys 2020, eq. 2): the same server, sites add (mu/2)||w - x||^2 to their loss.
- FedAdam / FedYogi (Reddi et al., ICLR 2021): the same average, then an adaptive server step.
- FedAvgM (Hsu et al. 2019): the same average, then a server step with heavy-ball momentum.

The average itself is an aggregator (aggregators.py): the sample-weighted mean by default, or a
robust rule (median, trimmed mean, Krum, norm bounding) that any of these algorithms can use.
"""

from __future__ import annotations

from collections.abc import Sequence

from medfed.algorithms.aggregate import WeightedMean, cast_like
from medfed.algorithms.aggregators import Aggregator, AggregatorFactory
from medfed.algorithms.checkpoint import Checkpoint
from medfed.algorithms.server_optimizer import ServerOptimizer
from medfed.types import Prediction, SiteId, StateDict, Update


class FedAvg:
    prediction = Prediction.GLOBAL

    def __init__(self, initial: StateDict, name: str = "fedavg", proximal_mu: float = 0.0,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregator: AggregatorFactory | None = None) -> None:
        self.name = name
        self._global = initial
        self.train_overrides = {"proximal_mu": proximal_mu} if proximal_mu else {}
        self.server_optimizer = server_optimizer
        self._new_aggregator = aggregator or (lambda reference: WeightedMean())
        self._stage: Aggregator = self._new_aggregator(initial)
        self._stage_sites: list[SiteId] = []
        self.aggregation_notes: dict[str, list[SiteId]] = {}
        self._trained: set[SiteId] = set()

    @property
    def global_state(self) -> StateDict:
        return self._global

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        return [list(sites)]

    def payload(self, site: SiteId) -> StateDict:
        return self._global

    def open_stage(self) -> None:
        self._stage = self._new_aggregator(self._global)
        self._stage_sites = []
        self.aggregation_notes = {}

    def receive(self, update: Update) -> None:
        self._stage.add(update.state, update.n_samples)
        self._stage_sites.append(update.site)
        self._trained.add(update.site)

    def close_stage(self) -> None:
        if self._stage.count == 0:
            return  # nobody delivered: the model stays as it was
        averaged = self._stage.result()
        self.aggregation_notes = {what: [self._stage_sites[i] for i in indices]
                                  for what, indices in self._stage.notes().items()}
        if self.server_optimizer is not None:
            averaged = self.server_optimizer.step(self._global, averaged)
        # Keys an update may leave out (FedBN's local layers) keep their global value.
        self._global = {**self._global, **cast_like(averaged, self._global)}

    def site_state(self, site: SiteId) -> StateDict:
        return self._global

    def checkpoint(self) -> Checkpoint:
        """The global model, the server optimizer's moments, who has trained."""
        checkpoint = Checkpoint(facts={"trained": sorted(self._trained)}).add("global/", self._global)
        if self.server_optimizer is not None:
            checkpoint.add("server_m/", self.server_optimizer.m).add("server_v/",
                                                                     self.server_optimizer.v)
        return checkpoint

    def restore(self, checkpoint: Checkpoint) -> None:
        self._global = checkpoint.part("global/")
        self._trained = set(checkpoint.facts.get("trained", []))
        if self.server_optimizer is not None:
            self.server_optimizer.m = checkpoint.part("server_m/")
            self.server_optimizer.v = checkpoint.part("server_v/")
        self.open_stage()

    @property
    def trained_sites(self) -> list[SiteId]:
        return list(self._trained)
