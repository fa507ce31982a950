"""One experiment in simulation: data -> sites -> federated training (and baselines) -> test metrics.

Everything random descends from config.seed through numpy SeedSequences, so the same seed gives
the same partition, the same initial model, the same training and the same metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medfed.algorithms.compression import compress_strategy
from medfed.algorithms.compression_spec import parse_compression
from medfed.algorithms.registry import StrategyContext, build_strategy
from medfed.algorithms.split import SplitFed
from medfed.algorithms.strategy import Strategy
from medfed.client.attack_spec import Attack, parse_attack
from medfed.client.predictor import Predictor
from medfed.client.trainer import LocalSite, SiteTrainer, TrainOptions
from medfed.config import RunConfig
from medfed.config_execution import RAY
from medfed.config_topology import check_topology_sites
from medfed.data.dataset import Federation, SiteData, label_counts
from medfed.data.federation import build_federation
from medfed.data.sources import load_source
from medfed.data.transforms import Preprocess
from medfed.defaults import (
    DataFacts,
    Defaults,
    choose_defaults,
    choose_keep_best,
    choose_lr_schedule,
    choose_rounds,
    choose_sites,
    label_skew,
)
from medfed.device import pick_device
from medfed.errors import ConfigError, DataError, TransportError
from medfed.evaluation.metrics import compute_metrics
from medfed.models import ModelSpec, build_model, norm_keys, parameter_keys
from medfed.privacy.mechanisms import Mechanisms
from medfed.run_state import Resume, RunCheckpointer
from medfed.server.round_loop import RoundObserver, RoundPlan, RoundResult, run_rounds
from medfed.server.sampling import sample_sites
from medfed.server.selection import keeper, keeps_best, stop_rule
from medfed.simulated_site import SiteRecipe, make_site_trainer, site_seed  # noqa: F401 (re-exported)
from medfed.split_simulation import split_transport
from medfed.transport.base import SimulationTransport
from medfed.transport.inprocess import InProcessTransport
from medfed.transport.ray_transport import RayTransport
from medfed.types import Metrics, Prediction, SiteId, StateDict

if TYPE_CHECKING:
    from medfed.transport.ray_pool import RayPool

POOLED = "pooled"


@dataclass
class Setup:
    """What every training run of one experiment shares."""

    config: RunConfig
    federation: Federation
    spec: ModelSpec
    initial: StateDict
    preprocess: Preprocess
    predictor: Predictor  # the server side's scorer of the held-out test set
    parameter_keys: frozenset[str]
    norm_keys: frozenset[str]
    defaults: Defaults  # what was chosen from the data for settings the user left unset
    workers: RayPool | None = None  # backend = "ray": the run's workers (execution_session)


@dataclass
class Outcome:
    """One training run: a federated algorithm or a baseline."""

    name: str
    strategy: Strategy
    history: list[RoundResult]
    transport: SimulationTransport
    seconds: float
    test: Metrics = field(default_factory=dict)
    test_probs: np.ndarray | None = None  # the held-out test set's probabilities behind `test`
    privacy: dict = field(default_factory=dict)  # summary.json's `privacy` (privacy/mechanisms.py)
    # keep_best: the round whose model was kept (from 1) and its validation score; None: the last
    kept: dict | None = None
    # patience: the rounds run when the validation score stopped improving before the last round
    # (summary.json's `stopped_early`); None: every round given was run
    stopped_early: dict | None = None


def prepare(config: RunConfig) -> Setup:
    seeds = np.random.SeedSequence(config.seed).generate_state(2)
    source = load_source(config.data, int(seeds[0]))
    federation = build_federation(source, config.data, int(seeds[1]))
    # What the user left unset, chosen from the data; counted sites make the site-count checks run.
    counts = [label_counts(source.task, s.train.y, source.num_outputs)
              for s in federation.sites.values()]
    facts = DataFacts.of_source(source, federation.partition, config.data.image_size,
                                label_skew(counts))
    defaults = choose_sites(choose_defaults(config, facts),
                            len(federation.sites), federation.partition, source.groups is not None)
    defaults = choose_lr_schedule(choose_rounds(
        choose_keep_best(defaults, sum(len(s.val) for s in federation.sites.values()))))
    config = defaults.config
    check_topology_sites(config, federation.site_ids)
    size = config.data.image_size
    spatial = (size,) * source.spatial_dims if size and source.spatial_dims else None
    spec = ModelSpec(source.spatial_dims, source.in_channels, source.num_outputs, config.model.norm,
                     input_size=spatial or tuple(source.pool.x.shape[2:]), width=config.model.width)
    model = build_model(config.model.model, spec, config.seed)
    preprocess = Preprocess(source.max_value if source.spatial_dims else None, spatial)
    device = pick_device(config.device)
    return Setup(config=config, federation=federation, spec=spec, defaults=defaults,
                 initial={k: v.clone() for k, v in model.state_dict().items()},
                 preprocess=preprocess,
                 predictor=Predictor(model, source.task, preprocess, device),
                 parameter_keys=parameter_keys(model), norm_keys=norm_keys(model))


def train_options(config: RunConfig) -> TrainOptions:
    t = config.training
    return TrainOptions(epochs=t.local_epochs or 1, min_steps=t.local_steps or 0,
                        batch_size=t.batch_size, lr=t.lr,
                        optimizer=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay,
                        logit_adjust=t.logit_adjust)


def _round_plan(config: RunConfig, baseline: bool, first_round: int, selects: bool) -> RoundPlan:
    """A baseline trains every site every round and is scored once, at the end, unless it keeps
    its best round or stops on patience (selects: then it is scored on validation as often as the
    federation); both follow the run's learning-rate schedule (the same rate per round and epoch)."""
    fed, schedule = config.federation, config.training.lr_schedule
    if baseline:
        return RoundPlan(fed.rounds, 1.0, fed.min_sites, eval_every=fed.eval_every if selects else 0,
                         lr_schedule=schedule)
    return RoundPlan(fed.rounds, fed.fraction, fed.min_sites, fed.eval_every, start=first_round,
                     lr_schedule=schedule)


def train(setup: Setup, algorithm: str, sites: dict[SiteId, SiteData], name: str,
          observer: RoundObserver | None = None, baseline: bool = False,
          checkpoints: Path | None = None, resume: Resume | None = None,
          transport: SimulationTransport | None = None) -> Outcome:
    """Run one algorithm over the given sites: in this process, or on the run's Ray workers
    (config.execution.backend = "ray", inside execution_session(setup)).

    baseline: every site trains every round whatever the sampling fraction (the full budget of
    rounds x local epochs), and only the final models are scored (under keep_best or patience also
    on validation each round, to keep and stop by the federation's rule): no curve of it is kept.
    checkpoints: a folder that gets rounds.jsonl and a checkpoint after every round (run_state.py);
    resume: continue from such a checkpoint.
    transport: one that carries these sites already (the multi-node pooled baseline's workers,
    pooled_ddp.py); None: built here."""
    config = setup.config
    start = time.perf_counter()
    # Attacks are on the federation only: baselines stay the honest references they are meant to be.
    attack = None if baseline else parse_attack(config.adversary.attack)
    # Privacy too: the baselines are the non-private references of what privacy costs.
    privacy = Mechanisms.build(config, list(sites)) if not baseline else None
    spec = parse_compression(config.federation.compress)  # the baselines send nothing
    if transport is None:
        transport = _site_transport(setup, sites, site_recipe(setup, attack), privacy)
    strategy = run_strategy(setup, algorithm, list(sites), baseline, privacy)
    if isinstance(strategy, SplitFed):  # its sites also reach the server's middle, per batch
        transport = split_transport(transport, strategy)
    if privacy is not None:
        strategy = compress_strategy(privacy.wrap_strategy(strategy, counter=transport), spec)
    fed = config.federation
    first_round = resume.rounds_done if resume is not None else 0
    earlier: list[RoundResult] = resume.history if resume is not None else []
    stop = stop_rule(fed, strategy, list(sites), baseline, earlier)
    plan = _round_plan(config, baseline, first_round, keeps_best(fed, strategy, baseline) or bool(stop))
    sampling = np.random.default_rng(np.random.SeedSequence([config.seed, 2]))
    if resume is not None:
        strategy.restore(resume.checkpoint)
        resume.restore_privacy(privacy)
        for _ in range(first_round):  # the sampling stream, replayed past the rounds done
            sample_sites(list(sites), plan.fraction, sampling, minimum=plan.min_sites)
    if checkpoints is not None:
        observer = RunCheckpointer(checkpoints, observer, strategy, earlier, privacy)
    best = keeper(fed, strategy, baseline, observer, checkpoints, resume is not None)
    history = earlier + run_rounds(strategy, transport, list(sites), plan, train_options(config),
                                   sampling, best or observer, stop)
    if best is not None:
        best.restore_best()  # the model(s) of the round(s) with the best validation score
    outcome = Outcome(name, strategy, history, transport, time.perf_counter() - start)
    outcome.kept = best.kept() if best is not None else None
    outcome.stopped_early = stop.stopped_early(len(history), fed.rounds) if stop is not None else None
    if privacy is not None and privacy.active:
        if isinstance(transport, RayTransport):  # the DP-SGD accountants live in the workers
            transport.collect_privacy(privacy)
        outcome.privacy = privacy.report()
    outcome.test_probs, loss = predict_test(setup, outcome.strategy, list(sites))
    outcome.test = metrics_on_test(setup, outcome.test_probs, loss)
    return outcome


def run_strategy(setup: Setup, algorithm: str, sites: list[SiteId], baseline: bool = False,
                 privacy: Mechanisms | None = None) -> Strategy:
    """A fresh strategy of this run (before privacy wrappers): what train() runs, and what a
    checkpoint of it restores into (benchmarks that score every round's model)."""
    config = setup.config
    ctx = StrategyContext(setup.initial, setup.parameter_keys, setup.norm_keys, sites,
                          config.federation, config.training,
                          aggregator_override=privacy.aggregator() if privacy else None,
                          seed=config.seed, network=site_recipe(setup, None).model,
                          input_shape=(setup.spec.in_channels, *setup.spec.input_size))
    return build_strategy(algorithm, ctx, "server" if baseline else config.federation.topology)


def ensemble_models_are_local(config: RunConfig) -> bool:
    """Whether an ensemble's site models are the local-only baseline's models: each site trains
    alone either way, so they are when every site trains every round, honestly (no attacker, no
    privacy mechanism: the baselines are the honest, non-private references), and to the end (the
    local-only baseline keeps and stops each site on its own; the ensemble does not)."""
    fed = config.federation
    return (fed.fraction >= 1.0 and config.adversary.attack == "none"
            and not config.privacy.enabled and not fed.keep_best and not fed.patience)


def score_test(setup: Setup, strategy: Strategy, sites: list[SiteId]) -> Metrics:
    """The held-out test set, predicted as the strategy predicts (see types.Prediction)."""
    return metrics_on_test(setup, *predict_test(setup, strategy, sites))


def metrics_on_test(setup: Setup, probs: np.ndarray, loss: float) -> Metrics:
    """The clinical metrics (and the loss) of probabilities on the held-out test set."""
    source = setup.federation.source
    return {**compute_metrics(source.task, source.test.y, probs), "loss": loss}


def predict_test(setup: Setup, strategy: Strategy, sites: list[SiteId]) -> tuple[np.ndarray, float]:
    """(probabilities on the held-out test set, mean loss), as the strategy predicts."""
    if strategy.prediction is Prediction.SITE and _test_sites(setup, sites) is not None:
        return _predict_by_site(setup, strategy, sites)
    return setup.predictor.predict_mean(prediction_states(strategy, sites),
                                        setup.federation.source.test)


def predict_validation(setup: Setup, strategy: Strategy, sites: dict[SiteId, SiteData]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of every site's validation split, each scored with the model the
    site would use; in deployment only these scores and labels would leave a site, never images."""
    probs, labels = [], []
    for site, data in sites.items():
        p, _ = setup.predictor.predict_mean(site_states(strategy, site, list(sites)), data.val)
        probs.append(p)
        labels.append(data.val.y)
    return np.concatenate(probs), np.concatenate(labels)


def prediction_states(strategy: Strategy, sites: list[SiteId]) -> list[StateDict]:
    """The models whose mean probability scores a patient of no particular site."""
    if strategy.prediction is Prediction.GLOBAL:
        return [strategy.global_state]
    return [strategy.site_state(s) for s in members(strategy, sites)]


def site_states(strategy: Strategy, site: SiteId, sites: list[SiteId]) -> list[StateDict]:
    """The models that score a patient of `site`: its own model under a personalized strategy
    (FedBN), else as for any patient."""
    if strategy.prediction is Prediction.SITE:
        return [strategy.site_state(site)]
    return prediction_states(strategy, sites)


def members(strategy: Strategy, sites: list[SiteId]) -> list[SiteId]:
    """The sites whose own models make up a personalized strategy: those that trained at least
    once (with --fraction < 1 a site may never have been sampled)."""
    trained = [s for s in sites if s in strategy.trained_sites]
    if not trained:
        raise DataError("no site delivered a model; see the failures in rounds.jsonl")
    return trained


def _test_sites(setup: Setup, sites: list[SiteId]) -> np.ndarray | None:
    """Each test image's site index, when the test set is grouped by the training sites."""
    fed = setup.federation
    same_sites = list(fed.source.group_names) == sites
    return fed.source.test_groups if fed.partition == "natural" and same_sites else None


def _predict_by_site(setup: Setup, strategy: Strategy, sites: list[SiteId]
                     ) -> tuple[np.ndarray, float]:
    """Every test image scored by the model of its own site (how FedBN is deployed)."""
    test, groups = setup.federation.source.test, _test_sites(setup, sites)
    probs = np.zeros((len(test), setup.spec.num_outputs), np.float32)
    loss = 0.0
    for k, site in enumerate(sites):
        rows = np.flatnonzero(groups == k)
        site_probs, site_loss = setup.predictor.predict(strategy.site_state(site), test.subset(rows))
        probs[rows], loss = site_probs, loss + site_loss * len(rows)
    return probs, loss / len(test)


def score_local_models(setup: Setup, outcome: Outcome) -> dict[SiteId, Metrics]:
    """Each local-only site model alone on the held-out test set."""
    return {site: metrics_on_test(setup, *predicted)
            for site, predicted in predict_local_models(setup, outcome).items()}


def predict_local_models(setup: Setup, outcome: Outcome) -> dict[SiteId, tuple[np.ndarray, float]]:
    """(test probabilities, mean loss) of each local-only site model alone."""
    test = setup.federation.source.test
    return {site: setup.predictor.predict(outcome.strategy.site_state(site), test)
            for site in outcome.transport.sites}


def site_report(setup: Setup, outcome: Outcome) -> dict[SiteId, dict]:
    """Per site: sizes, label counts, the final model on the site's validation split and, when the
    site holds its own share of the test set, on that too (scored at the site)."""
    source = setup.federation.source
    last_val = outcome.history[-1].val
    report = {}
    for site, data in setup.federation.sites.items():
        entry: dict = {"n_train": len(data.train), "n_val": len(data.val),
                       "label_counts": label_counts(source.task, data.train.y, source.num_outputs),
                       "val": last_val.get(site) or _score_at_site(outcome, site, "val")}
        if data.test is not None and len(data.test):
            entry["n_test"] = len(data.test)
            entry["test"] = _score_at_site(outcome, site, "test")
        report[site] = entry
    return report


def _score_at_site(outcome: Outcome, site: SiteId, split: str) -> Metrics:
    """A site that cannot score any more is reported with no metrics, not a crash after training."""
    try:
        return outcome.transport.evaluate(site, outcome.strategy.site_state(site), split)
    except TransportError as exc:
        return {"error": str(exc)}  # type: ignore[dict-item]


def site_recipe(setup: Setup, attack: Attack | None) -> SiteRecipe:
    """How this experiment's sites are built, here or in a Ray worker."""
    source = setup.federation.source
    return SiteRecipe(setup.config, setup.spec, source.task, source.num_outputs, setup.preprocess,
                      attack)


@contextmanager
def execution_session(setup: Setup) -> Iterator[Setup]:
    """backend = "ray": the run's Ray workers, from its first training to its last score at a
    site (and Ray stopped after, if the run started it); the in-process backend needs nothing."""
    if setup.config.execution.backend != RAY:
        yield setup
        return
    from medfed.transport.ray_pool import RayPool  # Ray loads only when a run asks for it

    with RayPool.open(setup.config) as pool:
        setup.workers = pool
        try:
            yield setup
        finally:
            setup.workers = None


def _site_transport(setup: Setup, sites: dict[SiteId, SiteData], recipe: SiteRecipe,
                    privacy: Mechanisms | None) -> SimulationTransport:
    """The sites of one training run, in this process or on the run's Ray workers."""
    if setup.workers is not None:
        return setup.workers.transport(sites, recipe, privacy)
    if setup.config.execution.backend == RAY:
        raise ConfigError("backend = \"ray\" trains inside an execution session: call train() "
                          "within `with execution_session(setup):`")
    trainers = site_trainers(setup, sites, recipe, private=privacy is not None)
    return InProcessTransport(recipe.wrapped(trainers, privacy))


def site_trainers(setup: Setup, sites: dict[SiteId, SiteData], recipe: SiteRecipe | None = None,
                  private: bool = False) -> dict[SiteId, LocalSite]:
    """The in-process trainers of these sites (honest ones unless the recipe says otherwise);
    private: the run's privacy mechanisms apply (DP-SGD keeps a model per site)."""
    recipe = recipe or site_recipe(setup, None)
    device = setup.predictor.device
    # One model for all sites (they train one after another): memory flat in the number of sites.
    shared = recipe.model().to(device) if recipe.shares_model(private) else None
    return {site: recipe.trainer(k, data, device, shared) for k, (site, data) in enumerate(sites.items())}


def site_trainer(setup: Setup, k: int, data: SiteData) -> SiteTrainer:
    """The trainer of the k-th simulated site."""
    return make_site_trainer(setup.config, setup.spec, setup.federation.source.task,
                             setup.preprocess, setup.predictor.device, k, data)


def attacker_sites(config: RunConfig, sites: list[SiteId]) -> list[SiteId]:
    """The sites a configured attack makes malicious (the first `attackers` of them)."""
    return [] if config.adversary.attack == "none" else sites[:config.adversary.attackers]
