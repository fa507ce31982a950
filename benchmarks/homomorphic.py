"""Homomorphic encryption of updates: bytes per round and test AUC against plain FedAvg and secure
aggregation.

    .venv/bin/python benchmarks/homomorphic.py                         # cnn (70k), 20 rounds
    .venv/bin/python benchmarks/homomorphic.py --width 60 --rounds 3   # the ~1M-parameter cnn
    .venv/bin/python benchmarks/homomorphic.py --rounds 1              # a quick check that it runs

`medfed run`'s federated FedAvg training (no baselines) on PneumoniaMNIST, 5 sites, Dirichlet 0.5,
proportions 20:25:15:30:22, seed 0 (the setting of the privacy and compression benchmarks), once per
protection:

    plain       FedAvg, float32 weights both ways
    secagg      secure aggregation (masked int64 ring elements up; keys and shares not counted)
    he:all      CKKS (N = 8192, [60, 40, 60], 2^40), every layer encrypted
    he:subset   CKKS on the layers the gradient-inversion and label-inference attacks read most
                directly: the first two convolution blocks and the head (--subset)

Bytes are those the in-process transport counted (safetensors messages, headers included); with
homomorphic encryption they include the decryption exchange: the summed ciphertexts sent to each
site of the round, and each site's decrypted mean back. Each run appends one line to
benchmarks/out/homomorphic.jsonl; the end prints a markdown table. Round times are printed too
but are only valid on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from compression import DATA, REPO, base_config  # the compression benchmark's setting (this folder)

from medfed.config import PrivacyConfig
from medfed.experiment import prepare, train

SUBSET = ("features.0.*", "features.2.*", "head.*")
MODES = ("plain", "secagg", "he:all", "he:subset")


def privacy_of(mode: str, subset: tuple[str, ...]) -> PrivacyConfig:
    if mode == "secagg":
        return PrivacyConfig(secure_aggregation=True)
    if mode.startswith("he:"):
        return PrivacyConfig(homomorphic=True, encrypt_layers=subset if mode == "he:subset" else ())
    return PrivacyConfig()


def run_modes(args: argparse.Namespace, out: Path) -> list[dict]:
    config = base_config(args.data_file, args.rounds, args.seed, args.width)
    setup = prepare(config)
    config = setup.config  # with the settings chosen from the data (medfed/defaults.py)
    rows = []
    for mode in args.modes:
        run_config = replace(config, privacy=privacy_of(mode, tuple(args.subset)))
        start = time.perf_counter()
        outcome = train(replace(setup, config=run_config), "fedavg", setup.federation.sites, mode)
        row = {"mode": mode, "seed": args.seed, "rounds": args.rounds, "width": args.width,
               "subset": list(args.subset) if mode == "he:subset" else None,
               "bytes_up_per_round": statistics.mean(r.bytes_up for r in outcome.history),
               "bytes_down_per_round": statistics.mean(r.bytes_down for r in outcome.history),
               "seconds_per_round": statistics.mean(r.seconds for r in outcome.history),
               "test_auc": outcome.test["auc"], "seconds": time.perf_counter() - start}
        rows.append(row)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{mode:>9}: {row['bytes_up_per_round'] / 1e6:8.2f} MB up, "
              f"{row['bytes_down_per_round'] / 1e6:8.2f} MB down per round, test AUC "
              f"{row['test_auc']:.4f}, {row['seconds_per_round']:.1f} s per round", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    header = ("| protection | MB up per round (5 sites) | MB down per round | up vs plain | "
              "test AUC | AUC − plain |")
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    plain = next((r for r in rows if r["mode"] == "plain"), rows[0])
    for r in rows:
        lines.append(f"| {r['mode']} | {r['bytes_up_per_round'] / 1e6:.2f} | "
                     f"{r['bytes_down_per_round'] / 1e6:.2f} | "
                     f"{r['bytes_up_per_round'] / plain['bytes_up_per_round']:.1f}× | "
                     f"{r['test_auc']:.4f} | {r['test_auc'] - plain['test_auc']:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--width", type=int, default=None, help="cnn width (default: medfed's 16)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--subset", nargs="+", default=list(SUBSET),
                        help="he:subset's glob patterns of the layers it encrypts")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "homomorphic.jsonl",
                        help="the JSON lines file each run is appended to")
    args = parser.parse_args()
    if not args.data_file.is_file():
        raise SystemExit(f"skipped: {args.data_file} is absent (PneumoniaMNIST, pneumoniamnist.npz)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = run_modes(args, args.out)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
