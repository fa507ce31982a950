"""Robust aggregation under attack, and FedNova / SCAFFOLD under label skew, on real data.

    .venv/bin/python benchmarks/robustness.py attacks        # aggregators x attacks, Dirichlet 0.5
    .venv/bin/python benchmarks/robustness.py heterogeneity  # fedavg, fednova, scaffold, Dirichlet 0.1
    .venv/bin/python benchmarks/robustness.py attacks --table  # the saved results as Markdown

Every run is `medfed run`'s federated training (no baselines) on PneumoniaMNIST, 5 sites in the
proportions 20:25:15:30:22, seed 0; the attacker is the first site. Prints one line per run as it
finishes and appends it to benchmarks/out/<suite>.jsonl, so an interrupted suite can be read.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
import time
from dataclasses import replace
from pathlib import Path

import torch

from medfed.config import RunConfig
from medfed.config_file import config_from_dict
from medfed.experiment import prepare, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
AGGREGATORS = ["mean", "median", "trimmed-mean", "krum", "multi-krum", "norm-bound"]
ATTACKS = ["none", "scale:100", "sign-flip", "label-flip", "scale:-10"]


def base_config(data_file: Path, alpha: float, rounds: int, seed: int) -> RunConfig:
    return config_from_dict({
        "seed": seed, "device": "cpu", "baselines": False,
        "data": {"dataset": "medmnist", "data_file": str(data_file), "sites": 5,
                 "partition": "dirichlet", "alpha": alpha, "proportions": [20, 25, 15, 30, 22]},
        "federation": {"rounds": rounds, "eval_every": 0},
        "training": {"lr_schedule": "constant"},  # as RESULTS was measured
    })


def runs(suite: str) -> list[tuple[str, dict, dict]]:
    """(label, [federation] changes, other changes) for each run of the suite."""
    if suite == "attacks":
        return [(f"{agg} / {attack}", {"aggregator": agg}, {"adversary": {"attack": attack}})
                for attack in ATTACKS for agg in AGGREGATORS]
    sgd = {"training": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0}}
    return [(f"{alg} / {opt}", {"algorithm": alg}, extra)
            for opt, extra in (("adam", {}), ("sgd", sgd))
            for alg in ("fedavg", "fednova", "scaffold")]


def variant(config: RunConfig, federation: dict, other: dict) -> RunConfig:
    changes = {"federation": replace(config.federation, **federation)}
    if "adversary" in other:
        changes["adversary"] = replace(config.adversary, **other["adversary"])
    if "training" in other:
        changes["training"] = replace(config.training, **other["training"])
    return replace(config, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["attacks", "heterogeneity"])
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="run only labels matching this regular expression")
    parser.add_argument("--table", action="store_true",
                        help="print the saved results as a Markdown table instead of running")
    args = parser.parse_args()
    out = REPO / "benchmarks" / "out" / f"{args.suite}.jsonl"
    if args.table:
        print_table(out)
        return
    if not args.data_file.is_file():
        raise SystemExit(f"{args.data_file} not found (PneumoniaMNIST: https://zenodo.org/records/10519652)")
    torch.set_num_threads(args.threads)
    alpha = 0.5 if args.suite == "attacks" else 0.1
    config = base_config(args.data_file, alpha, args.rounds, args.seed)
    setup = prepare(config)  # one partition for every run
    config = setup.config  # with the settings chosen from the data (medfed/defaults.py)
    out.parent.mkdir(exist_ok=True)
    sizes = {s: len(d.train) for s, d in setup.federation.sites.items()}
    print(f"PneumoniaMNIST, Dirichlet {alpha}, sites {sizes}, {args.rounds} rounds, seed {args.seed}")
    for label, federation, other in runs(args.suite):
        if args.only and not re.search(args.only, label):
            continue
        run_config = variant(config, federation, other)
        start = time.perf_counter()
        outcome = train(replace(setup, config=run_config), run_config.federation.algorithm,
                        setup.federation.sites, label)
        failed = sum(len(r.failed) for r in outcome.history)
        # How often each site was left out (Krum) or clipped (norm bounding) over the rounds.
        notes = {what: dict(Counter(s for r in outcome.history for s in r.aggregation.get(what, [])))
                 for what in ("left_out", "clipped")}
        row = {"run": label, "alpha": alpha, "rounds": args.rounds, "seed": args.seed,
               "test": outcome.test, "rejected_updates": failed, "aggregation": notes,
               "seconds": round(time.perf_counter() - start, 1)}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        t = outcome.test
        print(f"{label:28s} AUC {t['auc']:.3f}  acc {t['accuracy']:.3f}  sens {t['sensitivity']:.3f}"
              f"  spec {t['specificity']:.3f}  rejected {failed:2d}  {row['seconds']:6.1f} s"
              f"  {_notes_text(notes)}", flush=True)


def _notes_text(notes: dict[str, dict[str, int]]) -> str:
    return "  ".join(f"{what}: " + ", ".join(f"{s} x{n}" for s, n in sorted(counts.items()))
                     for what, counts in notes.items() if counts)


def print_table(path: Path) -> None:
    """Test AUC (and accuracy) per run label 'rows / columns', the last result of each label."""
    rows: dict[str, dict[str, dict]] = {}
    for line in path.read_text().splitlines():
        result = json.loads(line)
        row, column = result["run"].split(" / ")
        rows.setdefault(row, {})[column] = result["test"]
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    print("| | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row, results in rows.items():
        cells = [f"{results[c]['auc']:.3f} ({results[c]['accuracy']:.3f})" if c in results else "-"
                 for c in columns]
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
