"""BrainTorrent: peer-to-peer federation where a site pulls its peers' newer models, merges, trains.

Roy et al., "BrainTorrent: A Peer-to-Peer Environment for Decentralized Federated Learning",
arXiv:1905.06731 (2019), Algorithm 1: a randomly selected client C_i pings every other client; each
C_j whose model version v_j is newer than the one C_i last merged from it sends its model; C_i
replaces its model by the sample-weighted average of its own and those (eq. 1, a_j = n_j / sum n),
trains it on its own data, and its version goes up by one.

Here one such step is one stage of the round loop, and a round is one step for each sampled site
in a seeded random order (SeedSequence([seed, round])), so every site trains once a round, as in
FedAvg and gossip, and rounds are comparable in compute. The order of a round does not depend on
earlier rounds, so a resumed run draws the same order. A site that has never trained and pulls
nothing starts from the initial model. The merge is gossip's (gossip.mix); the sites' models, the
consensus (their sample-weighted average, scored as the federated model), the consensus gap and
the checkpoint are Gossip's too; what differs is who averages with whom and when: one site a
step, with every peer whose model is newer (a full graph), reading models merged earlier in the
same round, as a sequential schedule does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfed.algorithms.checkpoint import Checkpoint
from medfed.algorithms.gossip import Gossip, mix
from medfed.algorithms.graphs import Graph
from medfed.algorithms.strategy import TopologyRound
from medfed.types import SiteId, StateDict, Update


class BrainTorrent(Gossip):
    def __init__(self, initial: StateDict, graph: Graph, model_bytes: int, seed: int,
                 name: str = "fedavg", proximal_mu: float = 0.0) -> None:
        super().__init__(initial, graph, model_bytes, name=name, proximal_mu=proximal_mu)
        self._seed = seed
        self._version: dict[SiteId, int] = {}  # v_j: how many times j has trained
        self._seen: dict[SiteId, dict[SiteId, int]] = {}  # i -> j -> v_j when i last merged j's
        self._pulled: dict[SiteId, dict[SiteId, int]] = {}  # this stage's pulls, kept on receive
        self._round_messages = 0

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        rng = np.random.default_rng(np.random.SeedSequence([self._seed, round_index]))
        self._round_messages = 0
        return [[site] for site in rng.permutation(sorted(sites)).tolist()]

    def open_stage(self) -> None:
        self._pulled = {}

    def payload(self, site: SiteId) -> StateDict:
        """The selected site's merge: its own model (once it has trained) and every peer's model
        newer than the one it last merged."""
        seen = self._seen.get(site, {})
        newer = [p for p in sorted(self.graph[site])
                 if self._version.get(p, 0) > seen.get(p, 0)]
        self._pulled[site] = {p: self._version[p] for p in newer}
        pairs = [(self._models[p], self._samples[p]) for p in newer]
        if site in self._models:
            pairs.insert(0, (self._models[site], self._samples[site]))
        return mix(pairs, self._initial) if pairs else self._initial

    def receive(self, update: Update) -> None:
        site = update.site
        self._models[site] = mix([(update.state, 1)], self._initial)  # cast to the model's dtypes
        self._samples[site] = update.n_samples
        self._version[site] = self._version.get(site, 0) + 1
        pulled = self._pulled.get(site, {})
        self._seen[site] = {**self._seen.get(site, {}), **pulled}
        self._round_messages += len(pulled)  # each pulled model was sent to this site once

    def close_stage(self) -> None:
        self._consensus = self._average()

    def round_stats(self) -> TopologyRound:
        return TopologyRound(consensus_gap=self.consensus_gap(),
                             bytes_peers=self._round_messages * self._model_bytes)

    def checkpoint(self) -> Checkpoint:
        checkpoint = super().checkpoint()
        checkpoint.facts.update(versions=dict(self._version),
                                seen={s: dict(v) for s, v in self._seen.items()})
        return checkpoint

    def restore(self, checkpoint: Checkpoint) -> None:
        super().restore(checkpoint)
        self._version = {s: int(v) for s, v in checkpoint.facts.get("versions", {}).items()}
        self._seen = {s: {p: int(v) for p, v in seen.items()}
                      for s, seen in checkpoint.facts.get("seen", {}).items()}
