"""How sites are connected, as the configuration writes it: the topology ("server", "p2p",
"hybrid"), the gossip graph of p2p ("ring", "k-regular:K", "full", or "braintorrent": pulls
from every peer, braintorrent.py) and the region map of hybrid
("north:site-a,site-b;south:site-c"). Parsing only: no torch, so config.py can check values early.
The graphs themselves are built in graphs.py, the strategies in gossip.py and hierarchical.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from medfed.errors import ConfigError

SERVER, P2P, HYBRID = "server", "p2p", "hybrid"
TOPOLOGIES = (SERVER, P2P, HYBRID)
RING, K_REGULAR, FULL, BRAINTORRENT = "ring", "k-regular", "full", "braintorrent"
GRAPHS = (RING, f"{K_REGULAR}:K", FULL, BRAINTORRENT)


@dataclass(frozen=True)
class GossipSpec:
    kind: str  # ring, k-regular, full or braintorrent (a full graph, pulled from one site a step)
    degree: int | None = None  # K of k-regular; the others' degree follows from the site count


def parse_gossip(text: str) -> GossipSpec:
    """'ring', 'full', 'braintorrent' or 'k-regular:K' (K >= 1); anything else is one ConfigError."""
    kind, _, arg = text.strip().partition(":")
    if kind in (RING, FULL, BRAINTORRENT) and not arg:
        return GossipSpec(kind)
    if kind == K_REGULAR:
        try:
            degree = int(arg)
        except ValueError:
            degree = 0
        if degree >= 1:
            return GossipSpec(K_REGULAR, degree)
    raise ConfigError(f"gossip must be one of {', '.join(GRAPHS)} (K a whole number >= 1), "
                      f"got {text!r}")


def check_graph(spec: GossipSpec, sites: int) -> None:
    """What a graph needs of the number of sites (a K-regular graph on n nodes exists iff
    K < n and K * n is even)."""
    if sites < 2:
        raise ConfigError(f"p2p gossip needs at least 2 sites, got {sites}")
    k = spec.degree
    if spec.kind == K_REGULAR and k is not None and (k >= sites or (k * sites) % 2):
        raise ConfigError(f"a {k}-regular graph on {sites} sites does not exist: K must be below "
                          f"the number of sites and K * sites even")


def parse_regions(text: str) -> dict[str, str]:
    """'north:site-a,site-b;south:site-c' -> {site: region}. Each site in exactly one region."""
    regions: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        region, sep, members = part.partition(":")
        sites = [s.strip() for s in members.split(",") if s.strip()]
        if not sep or not region.strip() or not sites:
            raise ConfigError(f"regions must read like 'north:site-a,site-b;south:site-c', got "
                              f"{text!r} (the part {part!r} has no region name or no sites)")
        for site in sites:
            if site in regions:
                raise ConfigError(f"site {site!r} is in two regions ({regions[site]!r} and "
                                  f"{region.strip()!r}); give each site one region")
            regions[site] = region.strip()
    if not regions:
        raise ConfigError("regions is empty; write e.g. 'north:site-a,site-b;south:site-c'")
    return regions


def check_regions(regions: dict[str, str], sites: list[str]) -> None:
    """Every site of the federation in a region, and no region member that is not a site."""
    unknown = sorted(set(regions) - set(sites))
    missing = [s for s in sites if s not in regions]
    if unknown or missing:
        what = (f"names unknown sites {unknown}" if unknown else f"leaves out {missing}")
        raise ConfigError(f"regions {what}; the sites are {', '.join(sites)}")
