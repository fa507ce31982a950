"""The checks that tie [federation]'s topology keys (topology, gossip, regions, global_every) to
the rest of the configuration: what runs without a central aggregator, and what does not yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medfed.algorithms.compression_spec import NONE as NO_COMPRESSION
from medfed.algorithms.topology_spec import (
    HYBRID,
    P2P,
    RING,
    SERVER,
    TOPOLOGIES,
    check_graph,
    check_regions,
    parse_gossip,
    parse_regions,
)
from medfed.config_checks import at_least, choice
from medfed.errors import ConfigError

if TYPE_CHECKING:
    from medfed.config import RunConfig

# The algorithms a topology other than server runs: those whose server step is the plain mean
# (FedProx only changes the site's loss). The others keep server state (moments, control variates,
# normalized steps) that has no home without a server.
DECENTRAL_ALGORITHMS = ("fedavg", "fedprox")


def check_topology(config: RunConfig) -> None:
    fed = config.federation
    choice("topology", fed.topology, TOPOLOGIES)
    gossip = parse_gossip(fed.gossip)
    at_least("global_every", fed.global_every, 1)
    if fed.regions is not None:
        parse_regions(fed.regions)
    _only_with(fed.topology, P2P, "gossip", fed.gossip != RING)
    _only_with(fed.topology, HYBRID, "regions", fed.regions is not None)
    _only_with(fed.topology, HYBRID, "global_every", fed.global_every != 1)
    if fed.topology == SERVER:
        return
    if fed.algorithm not in DECENTRAL_ALGORITHMS:
        raise ConfigError(f"topology {fed.topology} runs {' or '.join(DECENTRAL_ALGORITHMS)}, not "
                          f"{fed.algorithm} (its server state has no home without a server)")
    if fed.aggregator != "mean":
        raise ConfigError(f"topology {fed.topology} averages with the sample-weighted mean; "
                          f"aggregator {fed.aggregator} needs topology = \"server\"")
    p = config.privacy
    if p.secure_aggregation or p.client_dp:
        raise ConfigError(f"topology {fed.topology} has no central aggregator for secure "
                          "aggregation or client-level DP; use dp_sgd (each site's own DP)")
    if fed.topology == HYBRID and fed.regions is None:
        raise ConfigError("topology hybrid needs regions, e.g. --regions 'north:site-a,site-b;"
                          "south:site-c'")
    if fed.topology == P2P and fed.compress != NO_COMPRESSION:
        raise ConfigError("topology p2p sends whole models between peers; compressed gossip "
                          "(CHOCO-SGD) is not built: use compress = \"none\"")
    sites = config.data.known_sites
    if fed.topology == P2P and sites is not None:
        check_graph(gossip, sites)


def _only_with(topology: str, needs: str, key: str, given: bool) -> None:
    if given and topology != needs:
        raise ConfigError(f"{key} applies to topology {needs}, not {topology}; add "
                          f"--topology {needs} or leave {key} out")


def check_topology_sites(config: RunConfig, sites: list[str]) -> None:
    """The checks that need the sites' names (the data's natural sites are known only once it is
    read): every site in one region; a graph that exists on this many sites."""
    fed = config.federation
    if fed.topology == HYBRID and fed.regions is not None:
        check_regions(parse_regions(fed.regions), sites)
    if fed.topology == P2P:
        check_graph(parse_gossip(fed.gossip), len(sites))
