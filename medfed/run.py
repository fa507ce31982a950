"""`medfed run`: one experiment in simulation, its baselines, and everything it writes."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from medfed.baselines import Baselines, train_baselines
from medfed.baselines_beside import BaselinesBeside, Split, split_for, torch_threads
from medfed.bundle_write import simulation_bundle
from medfed.config import RunConfig
from medfed.console import print_table, print_verdict, results_table, threshold_caption
from medfed.evaluation.operating_rule import OperatingRule
from medfed.evaluation.topology import topology_summary
from medfed.experiment import (
    Outcome,
    Setup,
    attacker_sites,
    execution_session,
    members,
    prepare,
    site_report,
    train,
)
from medfed.output import prepare_out_dir, write_config, write_json, write_models, write_rounds
from medfed.pooled_ddp import check_pooled_workers
from medfed.pooled_record import pooled_label
from medfed.progress import RichRoundProgress
from medfed.report.artifacts import data_summary, gradcam_panels, write_gradcam, write_predictions
from medfed.report.many_sites import (
    hidden_local_note,
    is_many,
    name_list,
    shown_models,
    verdict_local,
)
from medfed.run_reading import read_run
from medfed.run_state import Resume, load_resume
from medfed.summary import run_summary
from medfed.types import Prediction

RUN_OPTIONS = "run-options.json"  # the run's flags that are not configuration (the operating rule)


def execute_run(config: RunConfig, out_dir: str | Path, console: Console | None = None,
                resume: bool = False, rule: OperatingRule | None = None) -> dict[str, Any]:
    """resume: out_dir holds an interrupted run of this config; continue after its last round.
    rule: how each model's operating point is chosen on validation data (default Youden's J)."""
    console = console or Console(stderr=True)
    rule = rule or OperatingRule()
    started = time.perf_counter()
    resumed = load_resume(Path(out_dir)) if resume else None
    setup = prepare(config)  # data and model first: a bad input leaves no half-made folder
    config = setup.config  # with the number of sites the data gave, if --sites was left out
    if config.baselines:  # a multi-node pooled baseline that cannot run is refused now
        check_pooled_workers(setup)
    out = prepare_out_dir(out_dir)
    write_config(out, config)
    if resumed is None:  # what --resume continues with besides config.toml
        write_json(out / RUN_OPTIONS, {"target_sensitivity": rule.target_sensitivity})
    if resumed is not None:
        console.print(f"resuming after round {resumed.rounds_done} of {config.federation.rounds}")
    fed = setup.federation
    if fed.source.skipped:  # counted here; the paths stay at the site (`medfed data check`)
        console.print(f"skipped {len(fed.source.skipped)} unreadable or missing files "
                      "(`medfed data check` lists them)")
    for note in fed.source.notes:
        console.print(f"data: {note}")
    console.print(f"[bold]medfed run[/]: {fed.source.name} ({fed.source.task}), "
                  f"{len(fed.sites)} sites ({fed.partition}), {config.federation.algorithm}, "
                  f"{config.federation.rounds} rounds, model {config.model.model}")
    _announce_defaults(console, setup)
    _announce_robustness(console, config, fed.site_ids)
    _announce_topology(console, config)
    with execution_session(setup):  # backend = "ray": the workers, until the sites have scored
        split = split_for(config, setup.predictor.device)
        with RichRoundProgress(console) as progress:
            federated, baselines = _train_arms(setup, split, out, progress, resumed, console)
        summary = _summary(setup, federated, baselines, rule)
    if split is not None:  # torch threads of each process: the arms' kernels round by them
        summary["baselines_beside"] = asdict(split)
    summary["data_summary"] = data_summary(setup)  # aggregates computed at each site
    _report_rounds(console, config, federated, baselines is not None, summary)
    if federated.privacy:
        summary["privacy"] = federated.privacy
        _report_privacy(console, federated.privacy)
    summary["total_seconds"] = time.perf_counter() - started
    summary["files"] = _write(out, setup, federated, summary)
    summary["files"] += simulation_bundle(out, setup, federated.strategy, summary, rule)  # model/
    probs = baselines.probs() if baselines is not None else {}
    summary["files"] += [*_write_report_inputs(out, setup, federated, probs, summary), "report.html"]
    write_json(out / "summary.json", summary)
    from medfed.report.build import build_report

    build_report(out)  # from the files just written, as `medfed report DIR` rebuilds it
    _print_results(Console(), summary, rule, f"held-out test set ({len(fed.source.test)} images) "
                                             f"- results in {out}")
    return summary


def _train_arms(setup: Setup, split: Split | None, out: Path, progress: RichRoundProgress,
                resumed: Resume | None, console: Console) -> tuple[Outcome, Baselines | None]:
    """The federation and, unless --no-baselines, its baselines: beside it in a second process
    with split's threads (baselines_beside.py), else (None) after it in this one."""
    config = setup.config
    if split is None:
        federated = _train_federated(setup, out, progress, resumed, console)
        return federated, train_baselines(setup, progress, federated) if config.baselines else None
    console.print(f"baselines train beside the federation: {split.federation} + "
                  f"{split.baselines} torch threads")
    with BaselinesBeside(config, split.baselines, progress) as beside:
        with torch_threads(split.federation):
            federated = _train_federated(setup, out, progress, resumed, console)
        return federated, beside.result()


def _train_federated(setup: Setup, out: Path, progress: RichRoundProgress, resumed: Resume | None,
                     console: Console) -> Outcome:
    """The federated training, checkpointed after every round into out (run_state.py)."""
    algorithm, rounds = setup.config.federation.algorithm, setup.config.federation.rounds
    bar = progress.start_run(algorithm, rounds)
    try:
        return train(setup, algorithm, setup.federation.sites, algorithm, bar, checkpoints=out,
                     resume=resumed)
    except KeyboardInterrupt:
        console.print(f"interrupted: the completed rounds are in {out / 'rounds.jsonl'}; "
                      f"`medfed run --resume {out}` continues after the last of them",
                      soft_wrap=True, markup=False)
        raise
    finally:
        bar.finish()  # its clock stops; the baselines' bars may go on


def _announce_defaults(console: Console, setup: Setup) -> None:
    """What was chosen from the data for the settings the user left unset, in one block."""
    lines = setup.defaults.lines()
    if lines:
        console.print("[bold]chosen from the data[/] (any flag overrides):")
        for line in lines:
            console.print(f"  {line}", markup=False, highlight=False)


def _announce_robustness(console: Console, config: RunConfig, sites: list[str]) -> None:
    fed = config.federation
    if fed.aggregator != "mean":
        from medfed.algorithms.aggregators import RobustSettings, build_aggregator

        factory = build_aggregator(fed.aggregator, RobustSettings(fed.byzantine, fed.krum_keep,
                                                                  fed.norm_bound))
        memory = ("streams: one running sum" if factory({}).streams
                  else "holds every update of a round: memory grows with the sites")
        console.print(f"aggregator [bold]{fed.aggregator}[/] (f = {fed.byzantine}; {memory})")
    attackers = attacker_sites(config, sites)
    if attackers:
        console.print(f"[bold red]simulated attack[/] {config.adversary.attack} by "
                      f"{', '.join(attackers)} (baselines stay honest)")


def _announce_topology(console: Console, config: RunConfig) -> None:
    fed = config.federation
    if fed.topology == "p2p":
        console.print(f"topology [bold]p2p[/]: no server; each site averages with its neighbours "
                      f"on a {fed.gossip} graph (test: the sites' average model)")
    elif fed.topology == "hybrid":
        console.print(f"topology [bold]hybrid[/]: regional averages, a global one every "
                      f"{fed.global_every} round(s); regions {fed.regions}")


def _report_privacy(console: Console, privacy: dict[str, Any]) -> None:
    """Epsilon spent per site (DP-SGD), the federation's (client-level DP), who stopped and why."""
    delta = privacy["delta"]
    if privacy["epsilon"]:
        epsilon = privacy["epsilon"]
        spent = name_list([f"{s} {e:.2f}" for s, e in epsilon.items()])
        largest = f" (largest {max(epsilon.values()):.2f})" if is_many(len(epsilon)) else ""
        console.print(f"[bold]privacy[/] DP-SGD epsilon spent per site (delta = {delta:g}): "
                      f"{spent}{largest}")
    for why in privacy.get("dp_sgd", {}).get("stopped", {}).values():
        console.print(f"[bold red]privacy budget[/] {why}")
    if "client_dp" in privacy:
        console.print(f"[bold]privacy[/] client-level DP: the federation's epsilon "
                      f"{privacy['client_dp']['epsilon']:.2f} at delta = {delta:g}")
    if "secure_aggregation" in privacy:
        console.print("[bold]privacy[/] secure aggregation: the server saw only masked updates")
    if "homomorphic" in privacy:
        console.print("[bold]privacy[/] homomorphic encryption (CKKS, layers: "
                      f"{privacy['homomorphic']['encrypted_layers']}): the server added ciphertexts "
                      "and saw only the mean the sites decrypted")


def _report_rounds(console: Console, config: RunConfig, federated: Outcome, with_baselines: bool,
                   summary: dict[str, Any]) -> None:
    """Where patience stopped the run, and which round's model the test figures are of."""
    run_rounds = len(federated.history)
    if federated.stopped_early is not None:
        summary["stopped_early"] = federated.stopped_early
        console.print(f"stopped after round {run_rounds} of {config.federation.rounds}: no better "
                      f"federated validation AUC for {config.federation.patience} rounds"
                      + (" (each baseline stops by the same rule on its own validation)"
                         if with_baselines else ""))
    if federated.kept is not None:  # keep_best
        summary["kept_round"] = federated.kept
        console.print(f"kept the model of round {federated.kept['round']} of {run_rounds} (best "
                      f"federated validation AUC {federated.kept['validation_auc']:.3f})")
    if with_baselines:
        _report_baseline_rounds(console, summary["baselines"])


def _report_baseline_rounds(console: Console, baselines: dict[str, Any]) -> None:
    """How far each baseline trained under the same rule, and which round it kept."""
    pooled, local = baselines["pooled"], baselines["local"].values()
    parts = []
    if "stopped_early" in pooled or "kept_round" in pooled:
        ran = pooled.get("stopped_early", {}).get("rounds_run")
        kept = pooled.get("kept_round", {}).get("round")
        parts.append("pooled " + ", ".join(([f"stopped after round {ran}"] if ran else [])
                                           + ([f"kept round {kept}"] if kept else [])))
    ran_local = sorted(m["rounds_run"] for m in local if "rounds_run" in m)
    if ran_local:
        span = str(ran_local[0]) if ran_local[0] == ran_local[-1] else f"{ran_local[0]}-{ran_local[-1]}"
        parts.append(f"local-only sites trained {span} rounds")
    if parts:
        console.print("baselines: " + "; ".join(parts))


def _write_report_inputs(out: Path, setup: Setup, federated: Outcome, baseline_probs: dict[str, Any],
                         summary: dict[str, Any]) -> list[str]:
    """predictions.npz (test labels, every model's probabilities) and gradcam.npz."""
    probs = {"federated": federated.test_probs, **baseline_probs}
    write_predictions(out / "predictions.npz", setup.federation.source.test.y, probs)
    skipped = write_gradcam(out / "gradcam.npz", gradcam_panels(setup, federated.strategy))
    if skipped:
        summary["gradcam_skipped"] = skipped
        return ["predictions.npz"]
    return ["predictions.npz", "gradcam.npz"]


def _summary(setup: Setup, federated: Outcome, baselines: Baselines | None, rule: OperatingRule
             ) -> dict[str, Any]:
    config, source = setup.config, setup.federation.source
    reading = read_run(setup, rule, federated, baselines)
    summary = run_summary(
        config, mode="simulation", dataset=source.name, task=str(source.task),
        class_names=list(source.class_names), partition=setup.federation.partition,
        sites=site_report(setup, federated), test=federated.test, n_test=len(source.test),
        device=str(setup.predictor.device), wall_seconds=federated.seconds,
        bytes_up=federated.transport.bytes_up, bytes_down=federated.transport.bytes_down,
        failed_updates={r.round + 1: r.failed for r in federated.history if r.failed},
        attackers=attacker_sites(config, setup.federation.site_ids),
        verdict=reading.verdict, operating_point=reading.federated,
        defaults=setup.defaults.record())
    summary |= {"skipped_files": len(source.skipped), "data_notes": list(source.notes)}
    if config.federation.topology != "server":
        summary["topology"] = topology_summary(setup, federated)
    if baselines is not None:
        summary["baselines"] = baselines.summary
        summary["baselines"]["pooled"]["operating_point"] = reading.pooled
        for site, point in reading.local.items():
            summary["baselines"]["local"][site] |= {
                "operating_point": point, "validation_auc": reading.local_val_auc[site]}
    return summary


def _write(out: Path, setup: Setup, federated: Outcome, summary: dict[str, Any]) -> list[str]:
    write_rounds(out, federated.history)
    strategy = federated.strategy
    models = ({None: strategy.global_state} if strategy.prediction is Prediction.GLOBAL
              else {s: strategy.site_state(s) for s in members(strategy, setup.federation.site_ids)})
    meta = {k: summary[k] for k in ("dataset", "task", "class_names", "algorithm", "model", "norm")}
    meta["spec"] = vars(setup.spec) | {"input_size": list(setup.spec.input_size)}
    return ["summary.json", "config.toml", "rounds.jsonl", *write_models(out, models, meta)]


def _print_results(console: Console, summary: dict[str, Any], rule: OperatingRule, title: str
                   ) -> None:
    """The verdict line first, then every model's test metrics at 0.5 and at its operating point
    (many local-only models: the best and the worst, and a line on the others)."""
    print_verdict(console, summary["verdict"])
    rows = {f"federated ({summary['algorithm']})": (summary["test"], summary["operating_point"])}
    local = {}
    if "baselines" in summary:
        pooled = summary["baselines"]["pooled"]
        rows[pooled_label(pooled)] = (pooled["test"], pooled["operating_point"])
        local = {f"local:{s}": (v["test"], v["operating_point"])
                 for s, v in summary["baselines"]["local"].items()}
    aucs = {name: test.get("auc") for name, (test, _) in local.items()}
    keep = verdict_local(summary)
    shown = shown_models(aucs, keep)
    rows |= {name.replace(":", " ", 1): local[name] for name in shown}
    table = results_table(rows, title)
    table.caption = " ".join(filter(None, [
        threshold_caption([p for _, p in rows.values()], rule.describe()),
        hidden_local_note(aucs, shown, keep)]))
    table.caption_justify = "left"
    print_table(console, table)
