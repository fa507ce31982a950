"""The Ray backend's transport: the driver's side of one training run whose sites live on Ray
workers (transport/ray_worker.py, placed by transport/ray_pool.py).

The round loop dispatches a whole stage at once (transport.base.StageDispatch), so every worker
trains its sites while the others train theirs; train(site) then waits for that site's reply. A
model is encoded once per stage and put in Ray's object store once, however many sites receive
it; the byte counts are those of the in-process transport (the same safetensors messages).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from medfed.client.trainer import TrainOptions
from medfed.errors import (
    BadReply,
    ConfigError,
    DataError,
    IncompatibleUpdate,
    MedfedError,
    NotEnoughSites,
    PrivacyBudgetExhausted,
    StateError,
    TransportError,
)
from medfed.transport.codec import decode_metadata, decode_state, encode_state
from medfed.transport.ray_worker import Reply, options_json
from medfed.types import Metrics, SiteId, StateDict, Update

if TYPE_CHECKING:
    from medfed.privacy.mechanisms import Mechanisms

# What a worker may report a site's failure as: the same errors an in-process site raises.
SITE_ERRORS: dict[str, type[MedfedError]] = {cls.__name__: cls for cls in (
    ConfigError, DataError, StateError, IncompatibleUpdate, TransportError, NotEnoughSites,
    PrivacyBudgetExhausted, BadReply)}


class RayTransport:
    """ray: the Ray module (imported by the pool, only when the backend is Ray); run: this
    training run's number in the pool; workers: the Ray actor each site lives on, and
    places: where that actor runs."""

    def __init__(self, ray: Any, run: int, workers: dict[SiteId, Any],
                 places: dict[SiteId, dict[str, str]]) -> None:
        self.ray, self.run = ray, run
        self.workers, self.places = workers, places
        self.bytes_up = 0
        self.bytes_down = 0
        self._pending: dict[SiteId, Any] = {}  # site -> the update its worker is working on
        self._scoring: dict[tuple[SiteId, str], Any] = {}  # (site, split) -> metrics on the way
        self._sent: tuple[StateDict, bytes, Any] | None = None  # the last state: bytes, object ref

    @property
    def sites(self) -> list[SiteId]:
        return list(self.workers)

    def placement(self, site: SiteId) -> dict[str, str]:
        return self.places.get(site, {})

    def dispatch(self, payloads: dict[SiteId, StateDict], options: TrainOptions) -> None:
        for site, state in payloads.items():
            self._pending[site] = self._submit(site, state, options)

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        pending = self._pending.pop(site, None)
        reply = self._wait(site, pending if pending is not None
                           else self._submit(site, state, options))
        if not isinstance(reply, bytes):
            raise BadReply(f"site {site}: its Ray worker answered a {type(reply).__name__}")
        self.bytes_up += len(reply)
        meta = decode_metadata(reply)
        return Update(site=site, state=decode_state(reply), n_samples=int(meta["n_samples"]),
                      n_steps=int(meta["n_steps"]), metrics=dict(meta["metrics"]))

    def dispatch_evaluation(self, states: dict[SiteId, StateDict], split: str) -> None:
        for site, state in states.items():
            self._scoring[site, split] = self._submit_evaluation(site, state, split)

    def evaluate(self, site: SiteId, state: StateDict, split: str) -> Metrics:
        pending = self._scoring.pop((site, split), None)
        reply = self._wait(site, pending if pending is not None
                           else self._submit_evaluation(site, state, split))
        if not isinstance(reply, str):
            raise BadReply(f"site {site}: its Ray worker answered a {type(reply).__name__}")
        self.bytes_up += len(reply)
        return json.loads(reply)

    def collect_privacy(self, privacy: Mechanisms) -> None:
        """Each DP-SGD site's budget from its worker into `privacy`, so privacy.report() sees
        what every site spent, as it does for sites trained in this process."""
        from medfed.privacy.dp_sgd import DPSiteRecord

        for worker in {id(w): w for w in self.workers.values()}.values():
            for site, record in json.loads(self.ray.get(worker.dp_budgets.remote(self.run))).items():
                privacy.dp_sites[site] = DPSiteRecord.from_json(record)

    def _submit_evaluation(self, site: SiteId, state: StateDict, split: str) -> Any:
        return self.workers[site].evaluate.remote(self.run, site, self._encoded(site, state), split)

    def _submit(self, site: SiteId, state: StateDict, options: TrainOptions) -> Any:
        ref = self._encoded(site, state)
        return self.workers[site].train.remote(self.run, site, ref, options_json(options))

    def _encoded(self, site: SiteId, state: StateDict) -> Any:
        """The object ref of the state's bytes, counted as sent to `site`: encoded and put once
        per model (FedAvg sends one global state to every site of a round)."""
        if site not in self.workers:
            raise TransportError(f"unknown site '{site}'")
        if self._sent is None or self._sent[0] is not state:
            blob = encode_state(state)
            self._sent = (state, blob, self.ray.put(blob))
        self.bytes_down += len(self._sent[1])
        return self._sent[2]

    def _wait(self, site: SiteId, pending: Any) -> Reply:
        """The worker's reply; a site's error raised as it would be in process; a worker that
        died is that site's failure (TransportError), recorded by the round loop."""
        try:
            reply = self.ray.get(pending)
        except self.ray.exceptions.RayError as exc:
            raise TransportError(f"site {site}: its Ray worker failed "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        if isinstance(reply, str):
            error = json.loads(reply)
            if isinstance(error.get("error"), str):  # metrics are numbers, an error names itself
                raise SITE_ERRORS.get(error["error"], TransportError)(error["message"])
        return reply
