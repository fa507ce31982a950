"""In-process transport for simulation. Messages really are encoded as safetensors bytes, so the
server and each site never share a tensor, and the byte counts are those a network would carry."""

from __future__ import annotations

import json

from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.errors import TransportError
from medfed.transport.codec import decode_state, encode_state
from medfed.types import Metrics, SiteId, StateDict, Update


class InProcessTransport:
    def __init__(self, trainers: dict[SiteId, SiteTrainer]) -> None:
        self.trainers = trainers
        self.bytes_up = 0
        self.bytes_down = 0

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        received = self._deliver(site, state)
        update = self.trainers[site].train(received, options)
        reply = encode_state(update.state, {"n_samples": update.n_samples,
                                            "n_steps": update.n_steps, "metrics": update.metrics})
        self.bytes_up += len(reply)
        return Update(site=site, state=decode_state(reply), n_samples=update.n_samples,
                      n_steps=update.n_steps, metrics=dict(update.metrics))

    def evaluate(self, site: SiteId, state: StateDict, split: str) -> Metrics:
        metrics = self.trainers[site].evaluate(self._deliver(site, state), split)
        self.bytes_up += len(json.dumps(metrics))
        return metrics

    def _deliver(self, site: SiteId, state: StateDict) -> StateDict:
        if site not in self.trainers:
            raise TransportError(f"unknown site '{site}'")
        blob = encode_state(state)
        self.bytes_down += len(blob)
        return decode_state(blob)
