"""What secure aggregation and homomorphic encryption share at the server: a wrapper around an
averaging strategy (FedAvg, FedProx; FedAdam and FedYogi under secure aggregation) whose sites
reply in a form the server cannot read one by one (masked ring elements, CKKS ciphertexts). The
wrapper recovers only the round's average and hands it to the wrapped strategy as the round's one
update, so the wrapped strategy's own server step still applies; it remembers which sites
contributed, in the checkpoint under its own fact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medfed.algorithms.checkpoint import Checkpoint
from medfed.types import Prediction, SiteId, StateDict, Update


class HiddenSum:
    def __init__(self, inner: Any, fact: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.prediction: Prediction = inner.prediction
        self.train_overrides = inner.train_overrides
        self.aggregation_notes: dict[str, list[SiteId]] = {}
        self._fact = fact  # the checkpoint's record of the sites that contributed
        self._trained: set[SiteId] = set()

    def moved(self, keys: Sequence[str], mean_change: np.ndarray) -> StateDict:
        """The global model plus the round's mean change, laid out over `keys` in order."""
        start, averaged = 0, dict(self.inner.global_state)
        for k in keys:
            n = averaged[k].numel()
            change = torch.from_numpy(np.ascontiguousarray(mean_change[start:start + n]))
            averaged[k] = (averaged[k].to(torch.float64) + change.reshape(averaged[k].shape)
                           ).to(averaged[k].dtype)
            start += n
        return averaged

    def hand_over(self, averaged: StateDict, source: str) -> None:
        """The round's average, as the wrapped strategy's only update of the stage."""
        self.inner.open_stage()
        self.inner.receive(Update(site=source, state=averaged, n_samples=1, n_steps=0))
        self.inner.close_stage()

    def payload(self, site: SiteId) -> StateDict:
        return self.inner.payload(site)

    def site_state(self, site: SiteId) -> StateDict:
        return self.inner.site_state(site)

    @property
    def global_state(self) -> StateDict:
        return self.inner.global_state

    @property
    def trained_sites(self) -> list[SiteId]:
        return sorted(self._trained)

    def checkpoint(self) -> Checkpoint:
        """The inner strategy's state: a round's keys, masks and ciphertexts never outlive it."""
        checkpoint = self.inner.checkpoint()
        checkpoint.facts[self._fact] = sorted(self._trained)
        return checkpoint

    def restore(self, checkpoint: Checkpoint) -> None:
        self.inner.restore(checkpoint)
        self._trained = set(checkpoint.facts.get(self._fact, []))
