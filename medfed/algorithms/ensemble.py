"""An ensemble of local models: each site trains only its own model, nothing is averaged, and a
prediction averages the site models' output probabilities. Also the local-only baseline's engine."""

from __future__ import annotations

from collections.abc import Sequence

from medfed.algorithms.checkpoint import Checkpoint, per_site, per_site_back
from medfed.types import Prediction, SiteId, StateDict, Update


class LocalEnsemble:
    name = "ensemble"
    prediction = Prediction.ENSEMBLE

    def __init__(self, initial: StateDict) -> None:
        self._initial = initial
        self._local: dict[SiteId, StateDict] = {}
        self.train_overrides: dict[str, float | bool] = {}
        self.aggregation_notes: dict[str, list[SiteId]] = {}  # nothing is aggregated

    @property
    def global_state(self) -> StateDict:
        return self._initial  # there is no shared model; kept for the loop's update checks

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        return [list(sites)]

    def payload(self, site: SiteId) -> StateDict:
        return self.site_state(site)

    def open_stage(self) -> None:
        pass

    def receive(self, update: Update) -> None:
        self._local[update.site] = update.state

    def close_stage(self) -> None:
        pass

    def site_state(self, site: SiteId) -> StateDict:
        return self._local.get(site, self._initial)

    def put_site_state(self, site: SiteId, state: StateDict) -> None:
        """Replace a site's model (keep_best puts back each site's best round)."""
        self._local[site] = state

    def checkpoint(self) -> Checkpoint:
        return per_site(Checkpoint(), "local", self._local)

    def restore(self, checkpoint: Checkpoint) -> None:
        self._local = per_site_back(checkpoint, "local")

    @property
    def trained_sites(self) -> list[SiteId]:
        return list(self._local)
