"""Hybrid (hierarchical) federation: sites report to a regional aggregator, regions to a global one.

Each round every region's aggregator takes the sample-weighted FedAvg of its own sites; every
`global_every` rounds (and always in the last round) the global aggregator averages the regional
models weighted by each region's samples and sends the result back to every region. This is
HierFAVG (Liu et al., "Client-Edge-Cloud Hierarchical Federated Learning", ICC 2020, Algorithm 1,
with kappa_2 = global_every regional rounds per global one), for networks of hospital groups that
already share infrastructure within a group.

With global_every = 1 the result is FedAvg exactly, whatever the regions:
sum_g (n_g / n) sum_{k in g} (n_k / n_g) x_k = sum_k (n_k / n) x_k. What changes is who sees what
(the global aggregator sees only regional averages) and which links carry the models; with
global_every > 1 regions also drift apart between global rounds, as p2p's sites do.
"""

from __future__ import annotations

from collections.abc import Sequence

from medfed.algorithms.aggregate import WeightedMean, cast_like
from medfed.algorithms.checkpoint import Checkpoint, per_site, per_site_back
from medfed.algorithms.strategy import TopologyRound
from medfed.types import Prediction, SiteId, StateDict, Update


class Hierarchical:
    prediction = Prediction.GLOBAL  # the last round is always a global one: one model at the end

    def __init__(self, initial: StateDict, regions: dict[SiteId, str], rounds: int,
                 model_bytes: int, global_every: int = 1, name: str = "fedavg",
                 proximal_mu: float = 0.0) -> None:
        self.name = name
        self.regions = regions
        self.train_overrides = {"proximal_mu": proximal_mu} if proximal_mu else {}
        self.aggregation_notes: dict[str, list[SiteId]] = {}
        self._rounds, self._every, self._model_bytes = rounds, global_every, model_bytes
        self._global = initial
        self._regional = {region: initial for region in sorted(set(regions.values()))}
        self._means: dict[str, WeightedMean] = {}
        self._trained: set[SiteId] = set()
        self._round = 0
        self._region_bytes = 0

    @property
    def global_state(self) -> StateDict:
        return self._global

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        self._round = round_index
        return [list(sites)]

    def payload(self, site: SiteId) -> StateDict:
        return self._regional[self.regions[site]]

    def open_stage(self) -> None:
        self._means = {region: WeightedMean() for region in self._regional}
        self._region_bytes = 0

    def receive(self, update: Update) -> None:
        self._means[self.regions[update.site]].add(update.state, update.n_samples)
        self._trained.add(update.site)

    def close_stage(self) -> None:
        active = {g: m for g, m in self._means.items() if m.count}  # regions some site reported to
        averages = {g: m.result() for g, m in active.items()}  # float64: cast once, at the end
        for region, average in averages.items():
            self._regional[region] = self._cast(average)
        if active and self._global_round():
            combined = WeightedMean()
            for region, average in averages.items():
                combined.add(average, active[region].total)
            self._global = self._cast(combined.result())
            self._regional = {region: self._global for region in self._regional}
            # each active region uploads its average, every region downloads the global model
            self._region_bytes = (len(active) + len(self._regional)) * self._model_bytes

    def _global_round(self) -> bool:
        return (self._round + 1) % self._every == 0 or self._round == self._rounds - 1

    def _cast(self, averaged: StateDict) -> StateDict:
        return {**self._global, **cast_like(averaged, self._global)}

    def round_stats(self) -> TopologyRound:
        return TopologyRound(bytes_regions=self._region_bytes)

    def site_state(self, site: SiteId) -> StateDict:
        """The model the site's region holds (between global rounds, its region's average)."""
        return self._regional[self.regions[site]]

    @property
    def trained_sites(self) -> list[SiteId]:
        return list(self._trained)

    def checkpoint(self) -> Checkpoint:
        """The global model and the regional ones that differ from it (after a global round every
        region holds the global model itself, and safetensors stores a tensor once)."""
        checkpoint = Checkpoint(facts={"trained": sorted(self._trained)}).add("global/", self._global)
        apart = {g: state for g, state in self._regional.items() if state is not self._global}
        return per_site(checkpoint, "region", apart)

    def restore(self, checkpoint: Checkpoint) -> None:
        self._global = checkpoint.part("global/")
        self._regional = {g: self._global for g in self._regional} | per_site_back(checkpoint,
                                                                                   "region")
        self._trained = set(checkpoint.facts.get("trained", []))
        self.open_stage()
