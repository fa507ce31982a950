"""What the round loop asks of an algorithm. Strategies hold the server's model state and call the
pure functions of aggregate.py; they never see data, transport or gRPC.

One round, as the loop drives it:
    for stage in strategy.stages(round, sampled_sites):     # parallel sites; sequential stages
        strategy.open_stage()
        for site in stage: strategy.receive(train(site, strategy.payload(site)))
        strategy.close_stage()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from medfed.algorithms.checkpoint import Checkpoint
from medfed.types import Prediction, SiteId, StateDict, Update


class Strategy(Protocol):
    name: str
    # GLOBAL unless sites keep (part of) their own model (FedBN, the local ensemble); then each
    # site is scored with its own model, and a test image with its site's model or the ensemble.
    prediction: Prediction
    # Changes to a site's training options this algorithm needs (FedProx's proximal weight,
    # SCAFFOLD's control variates).
    train_overrides: dict[str, float | bool]
    # What the last stage's aggregation did to whom, for the round's record: {"left_out": [...]}
    # for the sites Krum left out, {"clipped": [...]} for those norm bounding clipped; else {}.
    aggregation_notes: dict[str, list[SiteId]]

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]: ...

    def payload(self, site: SiteId) -> StateDict: ...

    def open_stage(self) -> None: ...

    def receive(self, update: Update) -> None: ...

    def close_stage(self) -> None: ...

    def site_state(self, site: SiteId) -> StateDict:
        """The model a site is evaluated with (the global one when prediction is GLOBAL)."""
        ...

    @property
    def global_state(self) -> StateDict: ...

    @property
    def trained_sites(self) -> list[SiteId]:
        """Sites that delivered at least one update."""
        ...

    def checkpoint(self) -> Checkpoint:
        """Everything the server holds between rounds (algorithms/checkpoint.py)."""
        ...

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint taken after a completed round."""
        ...


@dataclass(frozen=True)
class TopologyRound:
    """What a strategy without one central aggregator (gossip.py, hierarchical.py) adds to a round's
    record: the consensus gap of p2p, and the model bytes its topology moves that no site-to-server
    message carries (peer to peer; regional to global aggregator)."""

    consensus_gap: float | None = None
    bytes_peers: int = 0  # models sent between sites, each counted once (it is received once)
    bytes_regions: int = 0  # models between the regional aggregators and the global one, both ways


@runtime_checkable
class TopologyReporting(Protocol):
    def round_stats(self) -> TopologyRound:
        """Called by the round loop once a round's stages are closed."""
        ...
