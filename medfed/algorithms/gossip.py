"""Gossip learning over a peer-to-peer graph: no central aggregator.

Each round every site trains from its own current model, then replaces it by the average of its
closed neighbourhood's freshly trained models (its own and its neighbours'): the "local step, then
gossip" form of decentralized SGD (Lian et al., "Can Decentralized Algorithms Outperform
Centralized Algorithms?", NeurIPS 2017, Algorithm 1 (D-PSGD); Koloskova et al., "A Unified Theory
of Decentralized SGD with Changing Topology and Local Updates", ICML 2020, Algorithm 1 with
tau local steps).

Mixing weights: x_i <- sum_{j in N[i]} n_j x_j / sum_{j in N[i]} n_j (N[i]: i and its neighbours;
n_j: j's training samples). Why sample-weighted and not Metropolis-Hastings: on the full graph this
is FedAvg exactly, so p2p reduces to the known algorithm, and a large hospital counts more than a
small one, as in FedAvg (Dirichlet splits differ several-fold in size); Metropolis-Hastings weights
are doubly stochastic and would give a 40-image site the say of a 4,000-image one. The graphs built
here (ring, K-regular, full) are regular, where Metropolis-Hastings weights are uniform over N[i],
so the two differ only by the sample counts. The cost: the mixing matrix is row- but not column-
stochastic, so pure averaging converges to the average weighted by n_i * sum_{j in N[i]} n_j (the
chain's stationary distribution), not exactly by n_i; the consensus gap still shrinks
geometrically (tests/algorithms/test_gossip.py).

A site that did not train this round (not sampled, or failed) sits the exchange out, as an offline
peer would: its model stays, and its neighbours average over those that did train.

Evaluation: each site is scored with its own model (site_state); the "federated model" on the
pooled test set is the consensus, the sample-weighted average of the sites' models (global_state),
which no site holds; how far the sites are from it (the consensus gap) is recorded each round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from medfed.algorithms import robust
from medfed.algorithms.aggregate import WeightedMean, cast_like
from medfed.algorithms.checkpoint import Checkpoint, per_site, per_site_back
from medfed.algorithms.graphs import Graph
from medfed.algorithms.strategy import TopologyRound
from medfed.types import Prediction, SiteId, StateDict, Update


def mix(models: Iterable[tuple[StateDict, int]], like: StateDict) -> StateDict:
    """The gossip step: the sample-weighted mean of (model, samples) pairs (a site's own and its
    neighbours'), cast to `like`'s dtypes (integer buffers stay integers; keys the models lack are
    `like`'s). One function for the simulation and for a deployed site (deploy/relay_site.py)."""
    mean = WeightedMean()
    for state, samples in models:
        mean.add(state, samples)
    return {**like, **cast_like(mean.result(), like)}


class Gossip:
    # The one model a patient of no particular site is scored with is the consensus.
    prediction = Prediction.GLOBAL

    def __init__(self, initial: StateDict, graph: Graph, model_bytes: int, name: str = "fedavg",
                 proximal_mu: float = 0.0) -> None:
        self.name = name
        self.graph = graph
        self.train_overrides = {"proximal_mu": proximal_mu} if proximal_mu else {}
        self.aggregation_notes: dict[str, list[SiteId]] = {}
        self._initial = initial
        self._model_bytes = model_bytes  # one model on the wire (safetensors), from the codec
        self._models: dict[SiteId, StateDict] = {}
        self._samples: dict[SiteId, int] = {}
        self._fresh: dict[SiteId, Update] = {}
        self._consensus = initial
        self._sent_messages = 0

    @property
    def global_state(self) -> StateDict:
        return self._consensus

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        return [list(sites)]

    def payload(self, site: SiteId) -> StateDict:
        return self.site_state(site)

    def open_stage(self) -> None:
        self._fresh = {}
        self._sent_messages = 0

    def receive(self, update: Update) -> None:
        self._fresh[update.site] = update
        self._samples[update.site] = update.n_samples

    def close_stage(self) -> None:
        mixed = {site: self._mix(site) for site in self._fresh}
        self._models.update(mixed)  # after every mix: each used the models of this round only
        self._consensus = self._average()

    def _mix(self, site: SiteId) -> StateDict:
        peers = [p for p in sorted(self.graph[site] | {site}) if p in self._fresh]  # sorted: the
        self._sent_messages += sum(p != site for p in peers)  # same sum order every run
        return mix(((self._fresh[p].state, self._fresh[p].n_samples) for p in peers), self._initial)

    def _average(self) -> StateDict:
        """The consensus: the sample-weighted average of every site's current model."""
        if not self._models:
            return self._initial
        return mix(((self._models[s], self._samples[s]) for s in sorted(self._models)),
                   self._initial)

    def consensus_gap(self) -> float:
        """Mean over the sites of ||x_i - x_bar|| (parameter L2, float tensors): 0 at consensus."""
        states = [self.site_state(site) for site in self.graph]
        return sum(robust.update_norm(s, self._consensus) for s in states) / len(states)

    def round_stats(self) -> TopologyRound:
        return TopologyRound(consensus_gap=self.consensus_gap(),
                             bytes_peers=self._sent_messages * self._model_bytes)

    def site_state(self, site: SiteId) -> StateDict:
        return self._models.get(site, self._initial)

    @property
    def trained_sites(self) -> list[SiteId]:
        return list(self._models)

    def checkpoint(self) -> Checkpoint:
        """Each site's own model and sample count (the graph is rebuilt from the seed)."""
        return per_site(Checkpoint(facts={"samples": dict(self._samples)}), "site", self._models)

    def restore(self, checkpoint: Checkpoint) -> None:
        self._models = per_site_back(checkpoint, "site")
        self._samples = {s: int(n) for s, n in checkpoint.facts.get("samples", {}).items()}
        self._consensus = self._average()
        self.open_stage()
