"""Compressed updates: bytes a site sends per round and the test AUC they cost.

    .venv/bin/python benchmarks/compression.py                       # 3 seeds, 20 rounds, cnn
    .venv/bin/python benchmarks/compression.py --width 60            # the ~1M-parameter cnn
    .venv/bin/python benchmarks/compression.py --seeds 1 --rounds 2  # a quick check that it runs

`medfed run`'s federated FedAvg training (no baselines) on PneumoniaMNIST, 5 sites, Dirichlet 0.5,
proportions 20:25:15:30:22 (the setting of the privacy and robustness benchmarks), once per seed
and compression: none, q8 (8-bit stochastic quantization of the update), topk:0.1 and topk:0.01
(top-k with error feedback). Bytes are those the in-process transport counted: the safetensors
messages the sites sent (header included), as summary.json's bytes_up. Each run appends one line
to benchmarks/out/compression.jsonl; the end prints a markdown table, mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from medfed.config import RunConfig
from medfed.config_file import config_from_dict
from medfed.experiment import prepare, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
COMPRESSIONS = ("none", "q8", "topk:0.1", "topk:0.01")


def base_config(data_file: Path, rounds: int, seed: int, width: int | None) -> RunConfig:
    model = {"width": width} if width else {}
    return config_from_dict({
        "seed": seed, "device": "cpu", "baselines": False,
        "data": {"dataset": "medmnist", "data_file": str(data_file), "sites": 5,
                 "partition": "dirichlet", "alpha": 0.5, "proportions": [20, 25, 15, 30, 22]},
        "model": model,
        "federation": {"rounds": rounds, "eval_every": 0},
        "training": {"lr_schedule": "constant"},  # as RESULTS was measured
    })


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> list[dict]:
    config = base_config(args.data_file, args.rounds, seed, args.width)
    setup = prepare(config)
    config = setup.config  # with the settings chosen from the data (medfed/defaults.py)
    rows = []
    for compress in args.compress:
        run_config = replace(config, federation=replace(config.federation, compress=compress))
        start = time.perf_counter()
        outcome = train(replace(setup, config=run_config), "fedavg", setup.federation.sites,
                        compress)
        per_round = [r.bytes_up for r in outcome.history]
        row = {"compress": compress, "seed": seed, "rounds": args.rounds, "width": args.width,
               "bytes_up_per_round": statistics.mean(per_round),
               "bytes_down_per_round": statistics.mean(r.bytes_down for r in outcome.history),
               "test_auc": outcome.test["auc"], "seconds": time.perf_counter() - start}
        rows.append(row)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {seed} {compress:>9}: {row['bytes_up_per_round'] / 1e6:8.3f} MB up per round, "
              f"test AUC {row['test_auc']:.4f}, {row['seconds']:.0f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| compress | MB up per round (5 sites) | vs none | test AUC (mean ± sd) | seeds |",
             "| --- | --- | --- | --- | --- |"]
    by = {c: [r for r in rows if r["compress"] == c] for c in dict.fromkeys(r["compress"] for r in rows)}
    plain = statistics.mean(r["bytes_up_per_round"] for r in by.get("none", rows))
    for compress, group in by.items():
        up = statistics.mean(r["bytes_up_per_round"] for r in group)
        aucs = [r["test_auc"] for r in group]
        sd = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
        lines.append(f"| {compress} | {up / 1e6:.3f} | {up / plain:.3f} | "
                     f"{statistics.mean(aucs):.4f}{sd} | {len(aucs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--width", type=int, default=None, help="cnn width (default: medfed's 16)")
    parser.add_argument("--compress", nargs="+", default=list(COMPRESSIONS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "compression.jsonl",
                        help="the JSON lines file each run is appended to")
    args = parser.parse_args()
    if not args.data_file.is_file():
        raise SystemExit(f"skipped: {args.data_file} is absent (PneumoniaMNIST, pneumoniamnist.npz)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [row for seed in range(args.seeds) for row in run_seed(args, seed, args.out)]
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
