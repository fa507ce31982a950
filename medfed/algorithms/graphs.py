"""The gossip graphs of the p2p topology: who exchanges models with whom.

A graph is {site: its neighbours} (undirected, no self-loops). A ring joins each site to the next
in the federation's order; a full graph joins every pair (BrainTorrent's too: any site may pull
from any other); a random K-regular graph is drawn with
networkx (uniformly among K-regular graphs, Steger and Wormald 1999) from the run's seed, so the
same seed gives the same graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from medfed.algorithms.topology_spec import BRAINTORRENT, FULL, K_REGULAR, RING, GossipSpec, check_graph
from medfed.types import SiteId

Graph = dict[SiteId, frozenset[SiteId]]


def build_graph(spec: GossipSpec, sites: Sequence[SiteId], seed: int) -> Graph:
    check_graph(spec, len(sites))
    n = len(sites)
    if spec.kind == RING:
        edges = {(k, (k + 1) % n) for k in range(n)}
    elif spec.kind in (FULL, BRAINTORRENT):  # a BrainTorrent site may pull from any peer
        edges = {(i, j) for i in range(n) for j in range(i + 1, n)}
    elif spec.kind == K_REGULAR and spec.degree is not None:
        import networkx as nx  # only a random regular graph needs it: a run starts without it

        edges = set(nx.random_regular_graph(spec.degree, n, seed=seed).edges())
    else:
        raise ValueError(f"no graph for {spec}")
    neighbours: dict[SiteId, set[SiteId]] = {site: set() for site in sites}
    for i, j in edges:
        if i != j:  # a ring of 2 sites is one edge, not a self-loop
            neighbours[sites[i]].add(sites[j])
            neighbours[sites[j]].add(sites[i])
    return {site: frozenset(peers) for site, peers in neighbours.items()}


def degrees(graph: Graph) -> dict[SiteId, int]:
    return {site: len(peers) for site, peers in graph.items()}
