"""Architectures: FedAvg (a server) against pooling, split learning, p2p gossip and hybrid.

    .venv/bin/python benchmarks/topologies.py --lr-schedule default    # 3 seeds, 20 rounds, the defaults
    .venv/bin/python benchmarks/topologies.py --seeds 1 --rounds 2     # a quick check that it runs
    .venv/bin/python benchmarks/topologies.py --lr-schedule constant --only "fedavg (server),p2p ring"

PneumoniaMNIST, 5 sites, Dirichlet 0.5 (no proportions: the split's own sizes), default cnn, the
defaults' local budget, no evaluation rounds and so no kept round (the last round's model is the
result), no baselines except the pooled row (one site holding every site's data, trained with the
same rounds x local budget). --lr-schedule: `constant` (how the first tables were measured) or
`default` (what `medfed run --eval-every 0` chooses: cosine, since no round is kept).

Per seed and architecture: the final test AUC (of the global model; for p2p the consensus, the
sample-weighted average of the sites' models, which no site holds) with its DeLong 95 % interval;
the mean test AUC of the sites' own models (p2p); the test AUC after every round (read from the
run's checkpoint after each round), hence the rounds to reach FedAvg's final AUC of the same seed;
the consensus gap of the last round; and the bytes per site over the run: to and from the server
(summary.json's bytes_up + bytes_down over the sites: the model, and for split learning also every
batch's activations and gradients at the cuts) or, for p2p, sent plus received between peers. Each
run appends one line to --out; the end prints a markdown table of the rows of the same rounds and
schedule, mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from medfed.algorithms.checkpoint import from_bytes
from medfed.config import RunConfig
from medfed.config_file import config_from_dict
from medfed.evaluation.statistics import delong_ci
from medfed.experiment import (
    Setup,
    metrics_on_test,
    predict_test,
    prepare,
    run_strategy,
    train,
)
from medfed.pooled_ddp import pooled_site
from medfed.run_state import CHECKPOINT
from medfed.server.round_loop import RoundResult, SilentObserver

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
POOLED = "pooled (all data at one site)"
# name -> the [federation] keys of that architecture ({regions} is filled with the run's sites)
TOPOLOGIES: dict[str, dict[str, Any]] = {
    "fedavg (server)": {},
    POOLED: {},
    "split learning, cut 5,1": {"algorithm": "split", "cut": "5,1"},
    "p2p ring": {"topology": "p2p", "gossip": "ring"},
    "p2p random 2-regular": {"topology": "p2p", "gossip": "k-regular:2"},
    "hybrid 2 regions": {"topology": "hybrid", "regions": "{regions}"},
    "hybrid 2 regions, global every 2": {"topology": "hybrid", "regions": "{regions}",
                                         "global_every": 2},
}


def base_config(data_file: Path, rounds: int, seed: int, lr_schedule: str | None = "constant",
                norm: str | None = None) -> RunConfig:
    """lr_schedule, norm: None leaves them to the defaults (cosine here: no round is kept)."""
    training = {} if lr_schedule is None else {"lr_schedule": lr_schedule}
    return config_from_dict({
        "seed": seed, "device": "cpu", "baselines": False,
        "data": {"dataset": "medmnist", "data_file": str(data_file), "sites": 5,
                 "partition": "dirichlet", "alpha": 0.5},
        "federation": {"rounds": rounds, "eval_every": 0},
        "training": training,
        "model": {} if norm is None else {"norm": norm},
    })


class TestCurve(SilentObserver):
    """After each round, the model of the round's checkpoint scored on the held-out test set."""

    def __init__(self, setup: Setup, folder: Path, sites: list[str], baseline: bool) -> None:
        self.setup, self.folder, self.sites, self.baseline = setup, folder, sites, baseline
        self.auc: list[float] = []

    def round_finished(self, result: RoundResult) -> None:
        checkpoint, _ = from_bytes((self.folder / CHECKPOINT).read_bytes())
        strategy = run_strategy(self.setup, self.setup.config.federation.algorithm, self.sites,
                                self.baseline)
        strategy.restore(checkpoint)
        probs, loss = predict_test(self.setup, strategy, self.sites)
        self.auc.append(metrics_on_test(self.setup, probs, loss)["auc"])


def regions_of(sites: list[str]) -> str:
    return f"north:{','.join(sites[:3])};south:{','.join(sites[3:])}"


def run_one(setup: Setup, name: str, keys: dict[str, Any]) -> dict[str, Any]:
    config, sites = setup.config, setup.federation.site_ids
    keys = {k: regions_of(sites) if v == "{regions}" else v for k, v in keys.items()}
    setup = replace(setup, config=replace(config, federation=replace(config.federation, **keys)))
    pooled = name == POOLED
    data = pooled_site(setup.federation) if pooled else setup.federation.sites
    with tempfile.TemporaryDirectory() as folder:
        curve = TestCurve(setup, Path(folder), list(data), baseline=pooled)
        start = time.perf_counter()
        outcome = train(setup, setup.config.federation.algorithm, data, name, curve,
                        baseline=pooled, checkpoints=Path(folder))
        seconds = time.perf_counter() - start
    history, n = outcome.history, len(sites)
    peers = sum(r.bytes_peers for r in history)
    server = sum(r.bytes_up + r.bytes_down for r in history) if not peers else 0
    ci = delong_ci(setup.federation.source.test.y.ravel(), outcome.test_probs[:, -1])
    own = [metrics_on_test(setup, *setup.predictor.predict(outcome.strategy.site_state(s),
                                                           setup.federation.source.test))["auc"]
           for s in sites] if peers else []
    return {"topology": name, "seed": config.seed, "rounds": config.federation.rounds,
            "lr_schedule": setup.config.training.lr_schedule, "norm": setup.config.model.norm,
            "pooled": pooled,
            "test_auc": outcome.test["auc"], "ci95": [ci.low, ci.high], "curve": curve.auc,
            "site_models_auc": own, "consensus_gap": history[-1].consensus_gap,
            "bytes_per_site": (server + 2 * peers) / n,
            "bytes_regions": sum(r.bytes_regions for r in history), "seconds": seconds}


def rounds_to_reach(curve: list[float], target: float) -> int | None:
    """The first round (from 1) whose test AUC is at least target; None if none is."""
    return next((r + 1 for r, auc in enumerate(curve) if auc >= target), None)


def table(rows: list[dict[str, Any]]) -> str:
    target = {r["seed"]: r["test_auc"] for r in rows if r["topology"] == "fedavg (server)"}
    lines = [("| topology | test AUC (mean ± sd) | DeLong 95 % CI per seed | sites' own models, "
              "test AUC | rounds to FedAvg's final AUC | consensus gap (last round) | "
              "MB per site | MB between aggregators |"), "|---" * 8 + "|"]
    for name in TOPOLOGIES:
        runs = [r for r in rows if r["topology"] == name]
        if not runs:
            continue
        lines.append("| " + " | ".join(accuracy_cells(name, runs, target) + [
            "-" if name == POOLED else _mean_sd([r["bytes_per_site"] / 1e6 for r in runs], 2),
            _mean_sd([r["bytes_regions"] / 1e6 for r in runs], 2)]) + " |")
    return "\n".join(lines)


def accuracy_cells(name: str, runs: list[dict[str, Any]], target: dict[int, float]) -> list[str]:
    """An architecture's first six cells (name to consensus gap) over its seeds' runs; target:
    FedAvg's final test AUC per seed."""
    reach = [rounds_to_reach(r["curve"], target[r["seed"]]) if r["seed"] in target else None
             for r in runs]
    own = [statistics.fmean(r["site_models_auc"]) for r in runs if r["site_models_auc"]]
    gaps = [r["consensus_gap"] for r in runs if r["consensus_gap"] is not None]
    return [name, _mean_sd([r["test_auc"] for r in runs]),
            "; ".join(f"{lo:.3f}–{hi:.3f}" for lo, hi in (r["ci95"] for r in runs)),
            _mean_sd(own) if own else "-",
            ", ".join("never" if k is None else str(k) for k in reach),
            _mean_sd(gaps) if gaps else "-"]


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "topologies.jsonl")
    parser.add_argument("--lr-schedule", choices=["constant", "default"], default="constant",
                        help="constant: as the first tables; default: what the defaults choose")
    parser.add_argument("--only", help="comma-separated names of TOPOLOGIES to run (default: all)")
    parser.add_argument("--norm", choices=["batch", "group", "instance"],
                        help="the model's norm (default: what the defaults choose)")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(TOPOLOGIES)
    if unknown := [n for n in names if n not in TOPOLOGIES]:
        raise SystemExit(f"--only: unknown {unknown}; valid: {list(TOPOLOGIES)}")
    schedule = None if args.lr_schedule == "default" else args.lr_schedule
    if not args.data_file.is_file() and not args.table_only:
        raise SystemExit(f"{args.data_file} not found (PneumoniaMNIST .npz); pass --data-file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            setup = prepare(base_config(args.data_file, args.rounds, seed, schedule, args.norm))
            for name in names:
                row = run_one(setup, name, TOPOLOGIES[name])
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"seed {seed} {name} ({row['norm']} norm): test AUC {row['test_auc']:.3f}; "
                      f"per round {' '.join(f'{a:.3f}' for a in row['curve'])}", flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    chosen = "cosine" if schedule is None else schedule
    print(table([r for r in rows if r["rounds"] == args.rounds
                 and r.get("lr_schedule", "constant") == chosen
                 and (args.norm is None or r.get("norm") == args.norm)]))


if __name__ == "__main__":
    main()
