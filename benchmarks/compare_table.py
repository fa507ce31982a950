"""Markdown tables of a `medfed compare` result, for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/compare_table.py runs/cmp-pneumonia            # test-set table
    .venv/bin/python benchmarks/compare_table.py runs/cmp-heart --site-mean    # FLamby's figure

Every figure is read from DIR/compare.json (nothing is recomputed): per configuration, the mean
± sd over seeds of the test metrics at threshold 0.5, the bootstrap 95 % interval of the test AUC
for each seed, sensitivity and specificity at the operating point chosen on validation data, and
then the paired tests of each federated model against pooled and the best single site.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="a medfed compare output folder")
    parser.add_argument("--site-mean", action="store_true",
                        help="the mean over the sites' own test splits instead of the test set")
    args = parser.parse_args()
    path = args.out_dir / "compare.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run medfed compare --out {args.out_dir} first")
    result = json.loads(path.read_text())
    part = "site_mean" if args.site_mean else "test"
    print(f"{result['dataset']}, seeds {result['seeds']}, {result['wall_seconds']:.0f} s; "
          f"metrics: {part} (mean ± sd over seeds)\n")
    print(configuration_table(result, part))
    print()
    print(paired_table(result))


def configuration_table(result: dict[str, Any], part: str) -> str:
    head = ["configuration", *(m if m == "auc" else f"{m} (0.5)" for m in METRICS),
            "test AUC 95 % CI per seed", "test sens / spec at the validation threshold"]
    rows = [_row(head), _row(["---"] * len(head))]
    for name, entry in result["configurations"].items():
        cells = [name, *(_mean_sd(entry[part].get(m)) for m in METRICS)]
        cis = [seed.get("ci95", {}).get("auc") for seed in entry.get("per_seed", [])]
        cells.append("; ".join(f"{lo:.3f}–{hi:.3f}" for lo, hi in filter(None, cis)) or "-")
        op = entry.get("operating_point", {})
        cells.append(f"{op['sensitivity']['mean']:.3f} / {op['specificity']['mean']:.3f}"
                     if op else "-")
        rows.append(_row(cells))
    return "\n".join(rows)


def paired_table(result: dict[str, Any]) -> str:
    head = ["comparison", "DeLong per seed: ΔAUC (p)", "t-test over seeds: ΔAUC [95 % CI] (p)"]
    rows = [_row(head), _row(["---"] * len(head))]
    for name, test in result["paired"].items():
        delong = "; ".join(f"{d['difference']:+.3f} vs {d['against']} ({d['p_value']:.2g})"
                           for d in test["delong"])
        t = test.get("t_test")
        t_cell = (f"{t['difference']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}] ({t['p_value']:.2g})"
                  if t else "- (one seed)")
        rows.append(_row([name, delong, t_cell]))
    return "\n".join(rows)


def _mean_sd(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    sd = summary.get("sd")
    return f"{summary['mean']:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
