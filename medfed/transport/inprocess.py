"""In-process transport for simulation. Messages really are encoded as safetensors bytes, so the
server and each site never share a tensor, and the byte counts are those a network would carry."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from medfed.client.trainer import LocalSite, TrainOptions
from medfed.errors import MedfedError, TransportError
from medfed.transport.codec import decode_state, encode_state
from medfed.types import Metrics, SiteId, StateDict, Update

T = TypeVar("T")


class InProcessTransport:
    def __init__(self, trainers: dict[SiteId, LocalSite]) -> None:
        self.trainers = trainers
        self.bytes_up = 0
        self.bytes_down = 0
        self._sent: tuple[StateDict, bytes] | None = None  # the last state encoded, and its bytes

    @property
    def sites(self) -> list[SiteId]:
        return list(self.trainers)

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        received = self._deliver(site, state)
        update = at_site(site, lambda: self.trainers[site].train(received, options))
        reply = encode_state(update.state, {"n_samples": update.n_samples,
                                            "n_steps": update.n_steps, "metrics": update.metrics})
        self.bytes_up += len(reply)
        return Update(site=site, state=decode_state(reply), n_samples=update.n_samples,
                      n_steps=update.n_steps, metrics=dict(update.metrics))

    def evaluate(self, site: SiteId, state: StateDict, split: str) -> Metrics:
        received = self._deliver(site, state)
        metrics = at_site(site, lambda: self.trainers[site].evaluate(received, split))
        self.bytes_up += len(json.dumps(metrics))
        return metrics

    def _deliver(self, site: SiteId, state: StateDict) -> StateDict:
        if site not in self.trainers:
            raise TransportError(f"unknown site '{site}'")
        blob = self._encode(state)
        self.bytes_down += len(blob)
        return decode_state(blob)

    def _encode(self, state: StateDict) -> bytes:
        """Encode once per model, not once per site: FedAvg sends the same global state to every
        site of a round (strategies replace their state dicts, never change them in place)."""
        if self._sent is None or self._sent[0] is not state:
            self._sent = (state, encode_state(state))
        return self._sent[1]


def at_site(site: SiteId, work: Callable[[], T]) -> T:
    """Run work at a site; whatever breaks there is that site's failure, reported as a
    TransportError as a remote site's would be, so the round loop records it and goes on."""
    try:
        return work()
    except MedfedError:
        raise
    except Exception as exc:  # noqa: BLE001 - any crash at a site is data for the round result
        raise TransportError(f"site {site} failed: {type(exc).__name__}: {exc}") from exc
