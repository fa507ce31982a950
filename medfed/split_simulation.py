"""Split learning composed in one process: the run's simulated sites, each wrapped as a split-learning
site (client/split_site.py) whose middle is the strategy's (algorithms/split.py), reached only
through the seam (transport/split_channel.py), which carries and counts every tensor as bytes."""

from __future__ import annotations

from medfed.algorithms.split import SplitFed
from medfed.client.split_site import SiteLink, SplitSite
from medfed.client.trainer import SiteTrainer
from medfed.errors import ConfigError
from medfed.transport.base import SimulationTransport
from medfed.transport.inprocess import InProcessTransport
from medfed.transport.split_channel import SplitChannel, SplitTransport


def split_transport(transport: SimulationTransport, server: SplitFed,
                    keep_log: bool = False) -> SplitTransport:
    """transport's sites, connected to server's middle. keep_log: the channel keeps every message
    it carried (tests read them)."""
    trainers = transport.trainers if isinstance(transport, InProcessTransport) else {}
    if not trainers or not all(isinstance(t, SiteTrainer) for t in trainers.values()):
        raise ConfigError("--algorithm split runs honest, non-private sites in this process "
                          "(backend inprocess, no attack or privacy mechanism)")
    channel = SplitChannel(server, server.cut_shapes, keep_log)
    sites = {site: SplitSite(trainer, SiteLink(channel, site), server.cut)
             for site, trainer in trainers.items() if isinstance(trainer, SiteTrainer)}
    return SplitTransport(InProcessTransport(dict(sites)), channel)
