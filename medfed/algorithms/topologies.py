"""The strategy of a topology other than server (config [federation] topology): gossip over a
peer-to-peer graph (gossip.py), BrainTorrent's pulls (braintorrent.py) or regional then global aggregation (hierarchical.py). Only the
federated run gets one; baselines (local-only, pooled) are the same whatever the topology."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medfed.algorithms.braintorrent import BrainTorrent
from medfed.algorithms.gossip import Gossip
from medfed.algorithms.graphs import Graph, build_graph
from medfed.algorithms.hierarchical import Hierarchical
from medfed.algorithms.strategy import Strategy
from medfed.algorithms.topology_spec import (
    BRAINTORRENT,
    P2P,
    check_regions,
    parse_gossip,
    parse_regions,
)
from medfed.transport.codec import encode_state
from medfed.types import SiteId

if TYPE_CHECKING:
    from medfed.algorithms.registry import StrategyContext

GRAPH_STREAM = 8  # the random stream of the k-regular graph: SeedSequence([seed, 8])


def graph_seed(run_seed: int) -> int:
    """The seed of the p2p graph (and of BrainTorrent's order): a deployed site derives the same
    graph from the federation's seed and sites as the simulation does (deploy/relay_site.py)."""
    return int(np.random.SeedSequence([run_seed, GRAPH_STREAM]).generate_state(1)[0])


def gossip_graph(gossip: str, sites: list[SiteId], run_seed: int) -> Graph:
    return build_graph(parse_gossip(gossip), sites, graph_seed(run_seed))


def build_topology(algorithm: str, ctx: StrategyContext) -> Strategy:
    fed = ctx.config
    mu = fed.mu if algorithm == "fedprox" else 0.0
    sites = list(ctx.sites)
    model_bytes = len(encode_state(ctx.initial))  # what one model message weighs on the wire
    if fed.topology == P2P:
        seed = graph_seed(ctx.seed)
        spec = parse_gossip(fed.gossip)
        graph = build_graph(spec, sites, seed)
        if spec.kind == BRAINTORRENT:  # its order of pulls: the same stream's seed
            return BrainTorrent(ctx.initial, graph, model_bytes, seed, name=algorithm,
                                proximal_mu=mu)
        return Gossip(ctx.initial, graph, model_bytes, name=algorithm, proximal_mu=mu)
    regions = parse_regions(fed.regions or "")
    check_regions(regions, sites)
    return Hierarchical(ctx.initial, regions, fed.rounds, model_bytes, fed.global_every,
                        name=algorithm, proximal_mu=mu)
