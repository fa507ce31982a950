"""The round loop: the one place where rounds happen, in simulation and in deployment alike.

A site that fails, or sends an update that does not match the global model, is recorded in the
round's result and left out; the round closes if at least min_sites usable updates arrived.

A strategy whose sites reply in another form says so: `update_template(sent)` is what a reply must
look like (secure aggregation's masked vectors; compression's int8 codes or top-k indices), and
`decode_update(update, sent)` (compression only) makes a checked reply a model again, which is then
checked against the model sent, inside the same try: a reply that does not decode is a failed site.
A strategy whose replies have no fixed layout (homomorphic aggregation's ciphertexts, whose byte
length varies) offers `check_reply(update, sent)` instead, which raises IncompatibleUpdate.

A transport whose sites work in parallel (gRPC: sites are other machines) may offer
`dispatch(payloads, options)` (transport.base.StageDispatch): the loop calls it once per stage with
every site's payload, so all sites of a stage start training at once, then collects each site's
update in the stage's order with `train(site, ...)`, exactly as it does in simulation (the Ray
backend does the same with its workers). The in-process transport has no dispatch: its train()
does the work when called.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from medfed.algorithms import robust
from medfed.algorithms.strategy import Strategy, TopologyReporting
from medfed.client.trainer import TrainOptions
from medfed.errors import IncompatibleUpdate, NotEnoughSites, TransportError
from medfed.lr_schedule import round_lr
from medfed.server.early_stop import EarlyStop, SiteEarlyStop
from medfed.server.sampling import sample_sites
from medfed.server.validation import check_update
from medfed.server.weights import cap_weights
from medfed.transport.base import EvaluationDispatch, SitePlacement, Transport
from medfed.types import CONTROL_PREFIX, Metrics, SiteId, StateDict, Update


@dataclass
class RoundResult:
    round: int
    sites: list[SiteId] = field(default_factory=list)  # sites whose update was aggregated
    failed: dict[SiteId, str] = field(default_factory=dict)  # site -> why it was left out
    eval_failed: dict[SiteId, str] = field(default_factory=dict)  # site -> why it could not score
    train_loss: dict[SiteId, float] = field(default_factory=dict)
    update_norm: dict[SiteId, float] = field(default_factory=dict)  # ||x_k - x||: outliers show here
    epsilon: dict[SiteId, float] = field(default_factory=dict)  # DP-SGD: each site's epsilon so far
    aggregation: dict[str, list[SiteId]] = field(default_factory=dict)  # e.g. Krum's "left_out"
    val: dict[SiteId, Metrics] = field(default_factory=dict)  # each site scores on its own split
    compression: str = "none"  # what the sites' replies were compressed with (compression.py)
    protection: str = "none"  # what hid each update from the server: secure_aggregation, homomorphic:...
    consensus_gap: float | None = None  # p2p: mean ||x_i - x_bar|| of the sites' own models
    bytes_peers: int = 0  # p2p: model bytes sent site to site (not in bytes_up / bytes_down)
    bytes_regions: int = 0  # hybrid: model bytes between regional and global aggregators
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    placement: dict[SiteId, dict[str, str]] = field(default_factory=dict)  # site -> where it trained


@dataclass(frozen=True)
class RoundPlan:
    rounds: int
    fraction: float = 1.0
    min_sites: int = 1
    eval_every: int = 1  # 0: never (the caller scores the final model itself)
    start: int = 0  # the first round to run (a resumed deployment continues where it stopped)
    max_weight_share: float | None = None  # no site above this share of a stage's weight
    lr_schedule: str = "constant"  # TrainingConfig.lr_schedule


class RoundObserver(Protocol):
    def round_started(self, round_index: int, sites: list[SiteId]) -> None: ...

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None: ...

    def round_finished(self, result: RoundResult) -> None: ...


class SilentObserver:
    def round_started(self, round_index: int, sites: list[SiteId]) -> None:
        pass

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None:
        pass

    def round_finished(self, result: RoundResult) -> None:
        pass


def run_rounds(strategy: Strategy, transport: Transport, sites: Sequence[SiteId], plan: RoundPlan,
               options: TrainOptions, rng: np.random.Generator,
               observer: RoundObserver | None = None,
               stop: EarlyStop | SiteEarlyStop | None = None) -> list[RoundResult]:
    """The rounds plan.start .. plan.rounds - 1, or fewer: stop, when given, ends the run once the
    federated validation score stops improving (checked before each round, so a resumed run that
    had already stopped runs none); a SiteEarlyStop stops each site on its own score."""
    observer = observer or SilentObserver()
    options = replace(options, **strategy.train_overrides)
    history = []
    for r in range(plan.start, plan.rounds):
        if stop is not None and stop.reached:
            break
        start, up, down = time.perf_counter(), transport.bytes_up, transport.bytes_down
        sampled = sample_sites(sites, plan.fraction, rng, minimum=plan.min_sites)
        if stop is not None:
            sampled = stop.training(sampled)
        observer.round_started(r, sampled)
        result = RoundResult(round=r, compression=getattr(strategy, "compression", "none"),
                             protection=getattr(strategy, "protection", "none"))
        stages = strategy.stages(r, sampled)
        for stage in stages:
            _run_stage(strategy, transport, stage,
                       replace(options, round=r, lr=round_lr(options.lr, r, plan.rounds, plan.lr_schedule)), result, observer,
                       plan.max_weight_share)
        asked = {site for stage in stages for site in stage}
        if len(set(result.sites)) < min(plan.min_sites, len(asked)):
            raise NotEnoughSites(f"round {r + 1}: {len(result.sites)} usable updates, "
                                 f"fewer than min_sites={plan.min_sites}; failures: {result.failed}")
        if isinstance(strategy, TopologyReporting):
            stats = strategy.round_stats()
            result.consensus_gap = stats.consensus_gap
            result.bytes_peers, result.bytes_regions = stats.bytes_peers, stats.bytes_regions
        if _evaluate_now(plan, r):
            scoring = stop.training(sites) if stop is not None else sites  # not the stopped ones
            result.val = _evaluate_sites(strategy, transport, scoring, result)
        result.bytes_up, result.bytes_down = transport.bytes_up - up, transport.bytes_down - down
        result.seconds = time.perf_counter() - start
        history.append(result)
        observer.round_finished(result)
        if stop is not None:
            stop.record(result.val)
    return history


def _run_stage(strategy: Strategy, transport: Transport, stage: list[SiteId], options: TrainOptions,
               result: RoundResult, observer: RoundObserver, share: float | None = None) -> None:
    """Each site's update, checked, into the strategy. With a weight cap the stage's updates are
    gathered first (the cap needs every count), then capped (server/weights.py) and received."""
    strategy.open_stage()
    payloads = {site: strategy.payload(site) for site in stage}
    dispatch = getattr(transport, "dispatch", None)
    if dispatch is not None:
        dispatch(payloads, options)
    held: list[tuple[Update, StateDict, bool]] = []  # (update, model sent, whether it is a model)
    for site in stage:
        if isinstance(transport, SitePlacement):  # the Ray backend: which node and worker
            result.placement[site] = transport.placement(site)
        try:
            update = transport.train(site, payloads[site], options)
            _check_origin(update, site)
            update, model = _checked(strategy, update, payloads[site])
        except (TransportError, IncompatibleUpdate) as exc:
            result.failed[site] = str(exc)
            observer.site_finished(result.round, site, None)
            continue
        if share is None:
            _receive(strategy, update, payloads[site], result, observer, model)
        else:
            held.append((update, payloads[site], model))
    capped = cap_weights({u.site: u.n_samples for u, _, _ in held}, share) if held and share else {}
    for update, sent, model in held:
        _receive(strategy, replace(update, n_samples=capped[update.site]), sent, result, observer,
                 model)
    strategy.close_stage()
    for what, sites in strategy.aggregation_notes.items():
        result.aggregation.setdefault(what, []).extend(sites)


def _receive(strategy: Strategy, update: Update, sent: StateDict, result: RoundResult,
             observer: RoundObserver, model: bool = True) -> None:
    site = update.site
    strategy.receive(update)
    result.sites.append(site)
    result.train_loss[site] = update.metrics.get("train_loss", float("nan"))
    if model:  # a masked or encrypted update has no norm to see
        result.update_norm[site] = update_norm(update.state, sent)
    if "epsilon" in update.metrics:
        result.epsilon[site] = update.metrics["epsilon"]
    observer.site_finished(result.round, site, result.train_loss[site])


def _evaluate_sites(strategy: Strategy, transport: Transport, sites: Sequence[SiteId],
                    result: RoundResult) -> dict[SiteId, Metrics]:
    """Each site scores the model on its own validation split; a site that cannot is recorded."""
    if isinstance(transport, EvaluationDispatch):  # the Ray backend: all workers score at once
        transport.dispatch_evaluation({site: strategy.site_state(site) for site in sites}, "val")
    scores = {}
    for site in sites:
        try:
            scores[site] = transport.evaluate(site, strategy.site_state(site), "val")
        except (TransportError, IncompatibleUpdate) as exc:  # a site's bad answer is its failure
            result.eval_failed[site] = str(exc)
    return scores


def update_norm(state: StateDict, sent: StateDict) -> float:
    """L2 norm of a site's change to the model it was sent (control variates left aside)."""
    model = {k: v for k, v in state.items() if not k.startswith(CONTROL_PREFIX)}
    return robust.update_norm(model, sent)


def _expected_update(strategy: Strategy, sent: StateDict) -> StateDict:
    """The model sent, or what a strategy that receives other things (secure aggregation's masked
    vectors: privacy/secure_round.py) says a reply must look like."""
    template = getattr(strategy, "update_template", None)
    return template(sent) if template is not None else sent


def _checked(strategy: Strategy, update: Update, sent: StateDict) -> tuple[Update, bool]:
    """A reply checked as it went out (and decoded, if compressed): (the update, whether it is a
    model whose norm the round may record)."""
    check = getattr(strategy, "check_reply", None)
    if check is not None:  # ciphertexts (privacy/homomorphic.py): no norm to see
        return check(update, sent), False
    check_update(update, _expected_update(strategy, sent))
    update, decoded = _decoded(strategy, update, sent)
    return update, decoded or _expected_update(strategy, sent) is sent


def _decoded(strategy: Strategy, update: Update, sent: StateDict) -> tuple[Update, bool]:
    """A compressed reply (algorithms/compression.py) made a model again, and checked as one:
    (the update, whether it was decoded)."""
    decode = getattr(strategy, "decode_update", None)
    if decode is None:
        return update, False
    update = decode(update, sent)
    check_update(update, sent)
    return update, True


def _check_origin(update: Update, site: SiteId) -> None:
    if update.site != site:
        raise IncompatibleUpdate(f"update from '{update.site}' arrived on the channel of '{site}'")


def _evaluate_now(plan: RoundPlan, r: int) -> bool:
    return plan.eval_every > 0 and ((r + 1) % plan.eval_every == 0 or r == plan.rounds - 1)
