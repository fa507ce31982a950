"""The baselines of `medfed run`: local-only (each site alone) and pooled (all training data in one
place), trained under the federation's budget and rule, and reduced to what the run reads of them:
summary.json's records, and each model's probabilities on validation and test data.

train_baselines() trains them in this process; baselines_beside.py runs the same function in a
process of its own while the federation trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from medfed.config import RunConfig
from medfed.experiment import (
    Outcome,
    Setup,
    ensemble_models_are_local,
    metrics_on_test,
    predict_local_models,
    predict_validation,
    train,
)
from medfed.pooled_ddp import train_pooled
from medfed.pooled_record import workers_label
from medfed.server.round_loop import RoundObserver
from medfed.types import SiteId

LOCAL = "ensemble"  # the local-only baseline is the ensemble's training: every site on its own


class Runs(Protocol):
    """Where training runs report progress: start_run gives each run its observer."""

    def start_run(self, name: str, rounds: int) -> RoundObserver: ...


@dataclass
class ModelScores:
    """A model's probabilities on the validation cases its operating point is chosen on, with their
    labels, and on the held-out test set."""

    val_probs: np.ndarray
    val_labels: np.ndarray
    test_probs: np.ndarray


@dataclass
class Baselines:
    """summary.json's `baselines` entry and the scores of the pooled and every local-only model."""

    summary: dict[str, Any]
    pooled: ModelScores
    local: dict[SiteId, ModelScores]

    def probs(self) -> dict[str, np.ndarray]:
        """Test probabilities by predictions.npz's names: "pooled", "local:<site>"."""
        return {"pooled": self.pooled.test_probs,
                **{f"local:{s}": m.test_probs for s, m in self.local.items()}}


def reuses_federation(config: RunConfig) -> bool:
    """Whether the federated run's site models are the local-only baseline's (an honest ensemble)."""
    return config.federation.algorithm == LOCAL and ensemble_models_are_local(config)


def train_baselines(setup: Setup, runs: Runs, federated: Outcome | None = None) -> Baselines:
    """Local-only and pooled, same budget: the same cap of rounds, each kept and stopped on its own
    validation as the federation is. federated: the run's own training, whose site models are the
    local-only ones when reuses_federation() (None: train them)."""
    sites, rounds = setup.federation.sites, setup.config.federation.rounds
    reuse = federated is not None and reuses_federation(setup.config)
    local = federated if reuse else train(
        setup, LOCAL, sites, "local", runs.start_run("local-only", rounds), baseline=True)
    label = workers_label(setup.config.execution.pooled_workers)
    pooled = train_pooled(setup, runs.start_run(label, rounds))
    predicted = predict_local_models(setup, local)  # once per site: metrics and predictions.npz
    summary = {"pooled": {"test": pooled.outcome.test, **pooled.record(), **_selection(pooled.outcome)},
               "local": {s: {"test": metrics_on_test(setup, *p), **_site_selection(local, s)}
                         for s, p in predicted.items()}}
    pooled_scores = ModelScores(*predict_validation(setup, pooled.outcome.strategy, sites),
                                pooled.outcome.test_probs)
    local_scores = {}
    for site, (test_probs, _) in predicted.items():
        val = sites[site].val  # a local-only model's threshold: its own site's validation split
        local_scores[site] = ModelScores(setup.predictor.predict(local.strategy.site_state(site),
                                                                 val)[0], val.y, test_probs)
    return Baselines(summary, pooled_scores, local_scores)


def _selection(outcome: Outcome) -> dict[str, Any]:
    """A baseline's kept_round and stopped_early (keep_best, patience), where they apply."""
    record = {"kept_round": outcome.kept, "stopped_early": outcome.stopped_early}
    return {k: v for k, v in record.items() if v is not None}


def _site_selection(local: Outcome, site: SiteId) -> dict[str, Any]:
    """A local-only site's own kept round and the rounds it trained, where it kept or stopped."""
    record: dict[str, Any] = {}
    if local.kept is not None and site in local.kept:
        record["kept_round"] = local.kept[site]
    if local.stopped_early is not None:
        record["rounds_run"] = local.stopped_early["rounds_run"][site]
    return record
