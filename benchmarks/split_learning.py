"""Split learning (U-shaped SplitFed) against FedAvg: test AUC and bytes per site per epoch.

    .venv/bin/python benchmarks/split_learning.py                          # 3 seeds, 20 rounds
    .venv/bin/python benchmarks/split_learning.py --seeds 1 --rounds 2     # a quick check that it runs

PneumoniaMNIST, 5 sites, Dirichlet 0.5, default cnn (10 blocks), one local epoch per round and no
extra local steps (local_steps = 0, so a round is exactly one epoch of every site's data), no
baselines, no evaluation rounds (only training messages are counted). Per seed: FedAvg, then split
learning at each --cuts value (H,T: the site keeps the first H and last T blocks). Per run: the
final test AUC with its DeLong 95 % interval, and the bytes per site per epoch up (site -> server)
and down (summary.json's bytes_up / bytes_down over sites and rounds): FedAvg's are the model, split
learning's the site-side part plus every batch's activations and gradients at the two cuts. Each
run appends one line to benchmarks/out/split_learning.jsonl; the end prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from topologies import _mean_sd

from medfed.config_file import config_from_dict
from medfed.evaluation.statistics import delong_ci
from medfed.experiment import prepare, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def run_one(data_file: Path, rounds: int, seed: int, algorithm: str, cut: str | None
            ) -> dict[str, Any]:
    federation: dict[str, Any] = {"algorithm": algorithm, "rounds": rounds, "eval_every": 0,
                                  "keep_best": False}
    if cut is not None:
        federation["cut"] = cut
    setup = prepare(config_from_dict({
        "seed": seed, "device": "cpu", "baselines": False,
        "data": {"dataset": "medmnist", "data_file": str(data_file), "sites": 5,
                 "partition": "dirichlet", "alpha": 0.5},
        "federation": federation,
        "training": {"local_epochs": 1, "local_steps": 0, "lr_schedule": "constant"},
    }))
    start = time.perf_counter()
    outcome = train(setup, algorithm, setup.federation.sites, algorithm)
    seconds = time.perf_counter() - start
    ci = delong_ci(setup.federation.source.test.y.ravel(), outcome.test_probs[:, -1])
    per_site_epoch = len(setup.federation.sites) * rounds
    return {"method": algorithm if cut is None else f"split {cut}", "seed": seed, "rounds": rounds,
            "test_auc": outcome.test["auc"], "ci95": [ci.low, ci.high],
            "bytes_up_per_site_epoch": outcome.transport.bytes_up / per_site_epoch,
            "bytes_down_per_site_epoch": outcome.transport.bytes_down / per_site_epoch,
            "seconds": seconds}


def table(rows: list[dict[str, Any]]) -> str:
    header = ("| method | test AUC (mean ± sd) | DeLong 95 % CI per seed | MB up per site per epoch | "
              "MB down per site per epoch | seconds per run (under load) |")
    lines = [header, "|---" * 6 + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        lines.append("| " + " | ".join([
            method, _mean_sd([r["test_auc"] for r in runs]),
            "; ".join(f"{lo:.3f}–{hi:.3f}" for lo, hi in (r["ci95"] for r in runs)),
            _mean_sd([r["bytes_up_per_site_epoch"] / 1e6 for r in runs], 2),
            _mean_sd([r["bytes_down_per_site_epoch"] / 1e6 for r in runs], 2),
            _mean_sd([r["seconds"] for r in runs], 0)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cuts", default="2,1;5,1", help="split learning's cuts, ';'-separated")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "out" / "split_learning.jsonl")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if not args.data_file.is_file() and not args.table_only:
        raise SystemExit(f"{args.data_file} not found (PneumoniaMNIST .npz); pass --data-file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        runs = [("fedavg", None)] + [("split", cut) for cut in args.cuts.split(";") if cut]
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for algorithm, cut in runs:
                row = run_one(args.data_file, args.rounds, seed, algorithm, cut)
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
