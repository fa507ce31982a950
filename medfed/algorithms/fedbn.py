"""FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization",
ICLR 2021): normalization layers (affine weights and running statistics) never leave their site;
everything else is averaged as in FedAvg. Each site is evaluated with its own normalization."""

from __future__ import annotations

from collections.abc import Sequence

from medfed.algorithms.checkpoint import Checkpoint, per_site, per_site_back
from medfed.algorithms.fedavg import FedAvg
from medfed.types import Prediction, SiteId, StateDict, Update


class FedBN:
    name = "fedbn"
    prediction = Prediction.SITE

    def __init__(self, inner: FedAvg, local_keys: frozenset[str]) -> None:
        self.inner = inner
        self.local_keys = local_keys
        self.train_overrides = inner.train_overrides
        self._local: dict[SiteId, StateDict] = {}

    @property
    def global_state(self) -> StateDict:
        return self.inner.global_state

    @property
    def aggregation_notes(self) -> dict[str, list[SiteId]]:
        return self.inner.aggregation_notes

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        return self.inner.stages(round_index, sites)

    def payload(self, site: SiteId) -> StateDict:
        return self.site_state(site)

    def open_stage(self) -> None:
        self.inner.open_stage()

    def receive(self, update: Update) -> None:
        self._local[update.site] = {k: v for k, v in update.state.items() if k in self.local_keys}
        shared = {k: v for k, v in update.state.items() if k not in self.local_keys}
        self.inner.receive(Update(update.site, shared, update.n_samples, update.n_steps, update.metrics))

    def close_stage(self) -> None:
        self.inner.close_stage()

    def site_state(self, site: SiteId) -> StateDict:
        return {**self.inner.global_state, **self._local.get(site, {})}

    def checkpoint(self) -> Checkpoint:
        return per_site(self.inner.checkpoint(), "local", self._local)

    def restore(self, checkpoint: Checkpoint) -> None:
        self.inner.restore(checkpoint)
        self._local = per_site_back(checkpoint, "local")

    @property
    def trained_sites(self) -> list[SiteId]:
        return list(self._local)
