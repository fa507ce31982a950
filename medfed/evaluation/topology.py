"""summary.json's `topology` block for a run without one central aggregator (p2p, hybrid).

p2p: the run's `test` is the consensus (the sample-weighted average of the sites' models, which no
site holds); here each site's own model is also scored on the held-out test set, next to the graph
and the consensus gap of every round. Both: the model bytes the topology moved that bytes_up /
bytes_down do not count (between peers; between regional and global aggregators).
"""

from __future__ import annotations

from typing import Any

from medfed.algorithms.gossip import Gossip
from medfed.algorithms.topology_spec import HYBRID, P2P, parse_regions
from medfed.experiment import Outcome, Setup, metrics_on_test


def topology_summary(setup: Setup, outcome: Outcome) -> dict[str, Any]:
    fed, history = setup.config.federation, outcome.history
    block: dict[str, Any] = {"kind": fed.topology,
                             "bytes_peers": sum(r.bytes_peers for r in history),
                             "bytes_regions": sum(r.bytes_regions for r in history)}
    strategy = outcome.strategy
    if fed.topology == P2P and isinstance(strategy, Gossip):
        test = setup.federation.source.test
        block |= {"gossip": fed.gossip,
                  "graph": {site: sorted(peers) for site, peers in strategy.graph.items()},
                  "consensus_gap": [r.consensus_gap for r in history],
                  "site_models": {site: {"test": metrics_on_test(
                      setup, *setup.predictor.predict(strategy.site_state(site), test))}
                      for site in strategy.graph}}
    if fed.topology == HYBRID:
        block |= {"regions": parse_regions(fed.regions or ""), "global_every": fed.global_every}
    return block
