"""The transport contract the round loop relies on. Implementations count the bytes they carry."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from medfed.client.trainer import TrainOptions
from medfed.types import Metrics, SiteId, StateDict, Update


class Transport(Protocol):
    bytes_up: int  # site -> server
    bytes_down: int  # server -> site

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        """Send the model to a site, train there, return its update (raises TransportError)."""
        ...

    def evaluate(self, site: SiteId, state: StateDict, split: str) -> Metrics:
        """Score a model on a site's own split ('val' or 'test'); only metrics come back."""
        ...


class StageDispatch(Protocol):
    """Optional: a transport whose sites train in parallel hands a whole stage out at once.

    The round loop calls dispatch once per stage, before it collects each site's update with
    train(site, ...); train() then waits for the reply of that site's dispatched work."""

    def dispatch(self, payloads: dict[SiteId, StateDict], options: TrainOptions) -> None: ...


@runtime_checkable
class EvaluationDispatch(Protocol):
    """Optional: the same for scoring: the round loop hands out every site's model to score on
    `split` at once, then collects each site's metrics with evaluate(site, state, split)."""

    def dispatch_evaluation(self, states: dict[SiteId, StateDict], split: str) -> None: ...


class SimulationTransport(Transport, Protocol):
    """A simulation's transport: it also knows the sites it carries."""

    @property
    def sites(self) -> list[SiteId]: ...


@runtime_checkable
class SitePlacement(Protocol):
    """Optional: a transport whose sites run in other processes says where each one ran
    (the Ray backend: node, IP, worker); the round loop records it in rounds.jsonl."""

    def placement(self, site: SiteId) -> dict[str, str]: ...
