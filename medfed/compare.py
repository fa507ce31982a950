"""`medfed compare`: several algorithms beside the local-only and pooled baselines, on the same
partition, for several seeds, with the statistics a clinical reader needs.

For each seed, every configuration ("fedavg", ..., "pooled", "local:<site>") is scored on:
- the held-out test set: the clinical metrics, with percentile-bootstrap 95 % intervals over the
  test images (binary tasks);
- each site's own test split when sites are natural ("site_mean" is their mean, the figure FLamby
  publishes; the worst site and the best-worst gap say whether it is fair to every site);
- calibration (expected calibration error and the reliability curve) and an operating point
  chosen on the sites' validation scores (Youden's J, or a target sensitivity), with the test
  sensitivity and specificity at that threshold.
Paired tests put each federated model against the pooled model and the best single site (chosen
by its own validation AUC, not by the test set): DeLong's test on the same test images per seed,
and a paired t-test of test AUC across seeds; each algorithm's verdict line (evaluation/verdict.py)
quotes the t-test, or with one seed DeLong's. The cross-site matrix scores every local model at
every site.

Across seeds each metric has `mean`, `sd` and `ci95`: the t-interval of the mean over seeds, or,
with one seed, the bootstrap interval over test images (for "site_mean": the t-interval over sites).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from medfed.compare_results import Scored, SeedResult, load_seed, save_seed
from medfed.compare_summary import LOCAL, paired_tests, summarize
from medfed.config import RunConfig
from medfed.console import name_column, print_table, print_verdict
from medfed.evaluation import statistics as st
from medfed.evaluation.metrics import compute_metrics
from medfed.evaluation.operating_point import ALL_SITES, OWN_SITE, operating_point
from medfed.evaluation.operating_rule import OperatingRule
from medfed.evaluation.verdict import compare_verdicts
from medfed.experiment import (
    POOLED,
    Setup,
    ensemble_models_are_local,
    execution_session,
    predict_validation,
    prediction_states,
    prepare,
    site_states,
    train,
)
from medfed.output import prepare_out_dir, write_config, write_json, write_rounds
from medfed.pooled_ddp import check_pooled_workers, train_pooled
from medfed.pooled_record import pooled_label, workers_label
from medfed.progress import RichRoundProgress
from medfed.report.artifacts import data_summary, gradcam_panels, write_gradcam, write_predictions
from medfed.types import SiteId, StateDict, Task


@dataclass(frozen=True)
class CompareOptions:
    algorithms: tuple[str, ...]
    seeds: int = 3
    n_boot: int = 1000
    target_sensitivity: float | None = None  # None: Youden's J


def run_seed(config: RunConfig, options: CompareOptions, observe: Callable[[str, int], Any],
             explain: bool = False) -> SeedResult:
    """Every configuration of one seed, and the cross-site AUC matrix; with `explain`, the
    Grad-CAM panels of the first algorithm that has a single model to explain."""
    setup = prepare(config)
    with execution_session(setup):  # backend = "ray": the workers, for every training of the seed
        return _run_prepared_seed(setup, config, options, observe, explain)


def _run_prepared_seed(setup: Setup, config: RunConfig, options: CompareOptions,
                       observe: Callable[[str, int], Any], explain: bool) -> SeedResult:
    sites = setup.federation.sites
    scored: dict[str, Scored] = {}
    histories: dict[str, list[Any]] = {}
    gradcam = None
    outcomes = {}
    for algorithm in options.algorithms:
        outcome = train(setup, algorithm, sites, algorithm, observe(algorithm, config.seed))
        outcomes[algorithm] = outcome
        histories[algorithm] = outcome.history
        if explain and (gradcam is None or "skipped" in gradcam):  # the ensemble has no one model
            gradcam = gradcam_panels(setup, outcome.strategy) | {"algorithm": np.array(algorithm)}
        predict = _strategy_predict(setup, outcome.strategy, list(sites))
        val = predict_validation(setup, outcome.strategy, sites)
        scored[algorithm] = _score(setup, algorithm, outcome.test_probs, predict, val, options)
    local = (outcomes["ensemble"] if _ensemble_is_local_baseline(config, outcomes)
             else train(setup, "ensemble", sites, "local", observe("local-only", config.seed), baseline=True))
    for site, data in sites.items():
        state = local.strategy.site_state(site)
        predict = _state_predict(setup, state)
        val = (setup.predictor.predict(state, data.val)[0], data.val.y)  # its own validation split
        scored[LOCAL + site] = _score(setup, LOCAL + site, predict(None, None), predict, val, options)
    pooled_run = train_pooled(setup, observe(workers_label(config.execution.pooled_workers),
                                             config.seed))
    pooled = pooled_run.outcome
    predict = _state_predict(setup, pooled.strategy.global_state)
    val = predict_validation(setup, pooled.strategy, sites)
    scored[POOLED] = _score(setup, POOLED, pooled.test_probs, predict, val, options)
    scored[POOLED].extra["execution"] = pooled_run.record()  # single-process or multi-node
    source = setup.federation.source
    about = {"dataset": source.name, "task": str(source.task), "class_names": list(source.class_names),
             "partition": setup.federation.partition, "sites": list(sites),
             "model": setup.config.model.model, "rounds": setup.config.federation.rounds,
             "local_epochs": setup.config.training.local_epochs,
             "n_test": len(source.test)}
    return SeedResult(scored, _cross_site(setup, local.strategy), source.test.y, histories,
                      data_summary(setup), gradcam, about)


def _ensemble_is_local_baseline(config: RunConfig, outcomes: dict[str, Any]) -> bool:
    """Reuse the ensemble's site models as the local-only ones rather than train the same models
    twice (a seventh of a compare's training time), when they are the same (experiment.py)."""
    return "ensemble" in outcomes and ensemble_models_are_local(config)


Predict = Callable[[SiteId | None, Any], np.ndarray]  # (site, samples or None for the test set)


def _state_predict(setup: Setup, state: StateDict) -> Predict:
    test = setup.federation.source.test
    return lambda site, samples: setup.predictor.predict(state, test if samples is None else samples)[0]


def _strategy_predict(setup: Setup, strategy: Any, sites: list[SiteId]) -> Predict:
    """A site's patients scored as the strategy would score them: the global model, the site's
    own model (FedBN), or the mean of the site models (the ensemble)."""
    def predict(site: SiteId | None, samples: Any) -> np.ndarray:
        states = (prediction_states(strategy, sites) if site is None
                  else site_states(strategy, site, sites))
        return setup.predictor.predict_mean(states, samples)[0]
    return predict


def _score(setup: Setup, name: str, test_probs: np.ndarray, predict: Predict,
           val: tuple[np.ndarray, np.ndarray], options: CompareOptions) -> Scored:
    source = setup.federation.source
    task = source.task
    scored = Scored(name, compute_metrics(task, source.test.y, test_probs), test_probs)
    for site, data in setup.federation.sites.items():
        if data.test is not None and len(data.test):
            scored.site_test[site] = compute_metrics(task, data.test.y, predict(site, data.test))
    if task is Task.BINARY:
        _binary_extras(scored, source.test.y, val, options, setup.config.seed)
    return scored


def _binary_extras(scored: Scored, y: np.ndarray, val: tuple[np.ndarray, np.ndarray],
                   options: CompareOptions, seed: int) -> None:
    score = scored.test_probs[:, -1]
    rng = np.random.default_rng([seed, 7])
    if len(np.unique(y)) == 2:
        scored.extra["ci95"] = st.bootstrap_binary_metrics(y, score, rng, options.n_boot)
    curve = st.reliability(y, score)
    scored.extra["ece"] = curve.ece
    scored.extra["reliability"] = {"mean_predicted": curve.mean_predicted.tolist(),
                                   "observed_rate": curve.observed_rate.tolist(),
                                   "counts": curve.counts.tolist()}
    val_score, val_y = val[0][:, -1], val[1]
    if len(np.unique(val_y)) == 2:
        scored.val_auc = st.auc(val_y, val_score)
        scored.extra["operating_point"] = operating_point(
            OperatingRule(options.target_sensitivity), (val_y, val_score), (y, score),
            OWN_SITE if scored.name.startswith(LOCAL) else ALL_SITES)


def _cross_site(setup: Setup, local: Any) -> list[list[float]] | None:
    """AUC of each site's local model (rows) at each site (columns), on the column site's own test
    split when sites are natural, else on its validation split."""
    if setup.federation.source.task is not Task.BINARY:
        return None
    sites = setup.federation.sites
    matrix = []
    for site in sites:
        state = local.site_state(site)
        row = []
        for data in sites.values():
            samples = data.test if data.test is not None and len(data.test) else data.val
            probs, _ = setup.predictor.predict(state, samples)
            row.append(st.auc(samples.y, probs[:, -1]))
        matrix.append(row)
    return matrix


def seed_configs(config: RunConfig, seeds: int) -> list[RunConfig]:
    """config.seed, config.seed + 1, ...: each its own partition, initial model and training."""
    return [replace(config, seed=config.seed + i) for i in range(seeds)]


def execute_compare(config: RunConfig, options: CompareOptions, out_dir: str | Path,
                    console: Console | None = None, resume: bool = False) -> dict[str, Any]:
    """Run every seed, write compare.json and config.toml, print the table; returns compare.json.
    Each seed is kept as soon as it is done (compare_results.py); resume: reuse the finished ones."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    configs = seed_configs(config, options.seeds)
    # A bad data path or config fails before any folder is made; config.toml gets the settings
    # chosen from the data filled in (the same for every seed: they depend on the data's kind).
    first = prepare(configs[0])
    check_pooled_workers(first)  # a multi-node pooled baseline that cannot run: refused now
    resolved = first.config
    out = prepare_out_dir(out_dir)
    write_config(out, resolved)
    write_json(out / "compare-options.json", asdict(options))  # what --resume continues with
    with RichRoundProgress(console) as progress:
        observe = lambda name, seed: progress.start_run(f"{name} (seed {seed})",
                                                         resolved.federation.rounds)
        results = [_seed(out, c, options, observe, k == 0, resume, console)
                   for k, c in enumerate(configs)]
    result = _result(config, options, results, time.perf_counter() - started)
    result["files"] = [*_write_report_inputs(out, configs, results, result), "report.html"]
    write_json(out / "compare.json", result)
    from medfed.report.build import build_report

    build_report(out)  # from the files just written, as `medfed report DIR` rebuilds it
    stdout = Console()
    for verdict in result["verdict"].values():
        print_verdict(stdout, verdict)
    print_table(stdout, _table(result, f"test set, mean ± sd over {options.seeds} seed(s) - {out}"))
    return result


def _seed(out: Path, config: RunConfig, options: CompareOptions,
          observe: Callable[[str, int], Any], explain: bool, resume: bool, console: Console
          ) -> SeedResult:
    """One seed: read back when a resumed compare finished it before, else run and kept."""
    done = load_seed(out, config.seed) if resume else None
    if done is not None:
        console.print(f"seed {config.seed}: finished before, read back from {out / 'seeds'}")
        return done
    try:
        result = run_seed(config, options, observe, explain=explain)
    except KeyboardInterrupt:
        console.print(f"interrupted: finished seeds are in {out / 'seeds'}; `medfed compare "
                      f"--resume {out}` continues", soft_wrap=True, markup=False)
        raise
    save_seed(out, config.seed, result)
    return result


def _write_report_inputs(out: Path, configs: list[RunConfig], results: list[SeedResult],
                         result: dict[str, Any]) -> list[str]:
    """rounds/<algorithm>-seed<k>.jsonl, predictions/seed<k>.npz and gradcam.npz (first seed)."""
    files = []
    for config, seed in zip(configs, results, strict=True):
        for algorithm, history in seed.histories.items():
            name = f"rounds/{algorithm}-seed{config.seed}.jsonl"
            write_rounds(out, history, name)
            files.append(name)
        name = f"predictions/seed{config.seed}.npz"
        write_predictions(out / name, seed.test_labels,
                          {n: s.test_probs for n, s in seed.scored.items()})
        files.append(name)
    skipped = write_gradcam(out / "gradcam.npz", results[0].gradcam or {"skipped": "not computed"})
    if skipped:
        result["gradcam_skipped"] = skipped
    else:
        files.append("gradcam.npz")
    return files


def _result(config: RunConfig, options: CompareOptions, results: list[SeedResult],
            seconds: float) -> dict[str, Any]:
    per_seed = [r.scored for r in results]
    result: dict[str, Any] = {
        **results[0].about,
        "algorithms": list(options.algorithms),
        "seeds": [config.seed + i for i in range(options.seeds)],
        "configurations": summarize(per_seed, options), "wall_seconds": seconds,
        "data_summary": results[0].data,  # the first seed's partition (each seed draws its own)
        "operating_point_rule": OperatingRule(options.target_sensitivity).name,
    }
    if results[0].cross_site is not None:  # binary tasks
        result["paired"] = paired_tests(results, options.algorithms)
        result["cross_site"] = {"sites": [n[len(LOCAL):] for n in per_seed[0] if n.startswith(LOCAL)],
                                "auc": [r.cross_site for r in results]}
    result["verdict"] = compare_verdicts(list(options.algorithms), result["task"],
                                         result.get("paired"))
    return result


def _table(result: dict[str, Any], title: str) -> Table:
    keys = ("auc", "accuracy", "sensitivity", "specificity", "f1")
    table = Table(title=title)
    name_column(table, "model")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("site mean auc", justify="right")
    for name, entry in result["configurations"].items():
        cells = [_mean_sd(entry["test"][k]) for k in keys]
        cells.append(_mean_sd(entry["site_mean"]["auc"]) if "site_mean" in entry else "-")
        table.add_row(pooled_label(entry) if name == POOLED else name, *cells)
    return table


def _mean_sd(summary: dict[str, Any]) -> str:
    mean, sd = summary["mean"], summary["sd"]
    return "-" if math.isnan(mean) else f"{mean:.3f} ± {sd:.3f}"
