"""Sequential weight transfer between institutions (Chang et al., "Distributed deep learning
networks among institutions for medical imaging", JAMIA 2018).

- SWT, single weight transfer: the model visits each site once, in order; site k holds it for
  rounds / K consecutive rounds before passing it on.
- CWT, cyclic weight transfer: every round the model visits every (sampled) site in turn, each
  training from where the previous site left it.
"""

from __future__ import annotations

from collections.abc import Sequence

from medfed.algorithms.checkpoint import Checkpoint
from medfed.errors import ConfigError
from medfed.types import Prediction, SiteId, StateDict, Update


class SequentialTransfer:
    prediction = Prediction.GLOBAL

    def __init__(self, initial: StateDict, all_sites: Sequence[SiteId], rounds: int, cyclic: bool
                 ) -> None:
        self.name = "cwt" if cyclic else "swt"
        if not cyclic and rounds < len(all_sites):
            raise ConfigError(f"swt passes the model through each of the {len(all_sites)} sites in "
                              f"turn, so it needs --rounds >= {len(all_sites)} (got {rounds})")
        self._global = initial
        self.all_sites = list(all_sites)
        self.rounds = rounds
        self.cyclic = cyclic
        self.train_overrides: dict[str, float | bool] = {}
        self.aggregation_notes: dict[str, list[SiteId]] = {}  # nothing is aggregated
        self._trained: set[SiteId] = set()

    @property
    def global_state(self) -> StateDict:
        return self._global

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        if self.cyclic:
            return [[site] for site in sites]
        holder = min(round_index * len(self.all_sites) // self.rounds, len(self.all_sites) - 1)
        return [[self.all_sites[holder]]]

    def payload(self, site: SiteId) -> StateDict:
        return self._global

    def open_stage(self) -> None:
        pass

    def receive(self, update: Update) -> None:
        self._global = update.state  # the next site starts from this one's weights
        self._trained.add(update.site)

    def close_stage(self) -> None:
        pass

    def site_state(self, site: SiteId) -> StateDict:
        return self._global

    def checkpoint(self) -> Checkpoint:
        """The model where the last site left it (the round index gives whose turn is next)."""
        return Checkpoint(facts={"trained": sorted(self._trained)}).add("global/", self._global)

    def restore(self, checkpoint: Checkpoint) -> None:
        self._global = checkpoint.part("global/")
        self._trained = set(checkpoint.facts.get("trained", []))

    @property
    def trained_sites(self) -> list[SiteId]:
        return list(self._trained)
