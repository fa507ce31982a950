"""Does per-site intensity harmonization help when every hospital's scanner differs?

Writes three DICOM site folders to a temporary directory, one per "scanner" (tests/dicom_files.py
SCANNERS: each stores the same physical signal with its own rescale slope/intercept, sign and
photometric interpretation, through its own gamma, gain and offset), from the built-in synthetic
radiographs (default) or from PneumoniaMNIST (--pneumonia PATH). Then runs `medfed run --dataset
dicom --partition natural` through the Python API with --harmonize none, zscore and histogram,
for each --norm asked, and prints the federated model's test AUC (on every site's held-out share)
and each site's own test AUC.

    python benchmarks/harmonization.py [--per-site 300] [--rounds 10] [--norms instance,batch]
                                       [--seeds 0] [--pneumonia ../shared/data/medmnist/pneumoniamnist.npz]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medfed.config import RunConfig  # noqa: E402
from medfed.config_file import with_overrides  # noqa: E402
from medfed.data.medmnist import load_medmnist  # noqa: E402
from medfed.data.synthetic import load_synthetic  # noqa: E402
from medfed.run import execute_run  # noqa: E402
from tests.dicom_files import write_scanner_sites  # noqa: E402

METHODS = ("none", "zscore", "histogram")


def images(per_site: int, pneumonia: str | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, H, W) in [0, 1], labels, site index: per_site images for each of three sites."""
    if pneumonia:
        source = load_medmnist(pneumonia)
        rng = np.random.default_rng(seed)
        pick = rng.permutation(len(source.pool))[: 3 * per_site]
        x, y = source.pool.x[pick, 0], source.pool.y[pick]
        return x.astype(np.float32) / 255, y, np.repeat(np.arange(3), per_site)
    source = load_synthetic(3, 3 * per_site, 10, seed, sizes=(per_site,) * 3)
    return source.pool.x[:, 0].astype(np.float32) / 255, source.pool.y, source.groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-site", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--norms", default="instance,batch")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--pneumonia", help="PneumoniaMNIST .npz instead of the synthetic images")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    quiet = Console(quiet=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in map(int, args.seeds.split(",")):
            root = Path(tmp) / f"seed{seed}"
            labels = write_scanner_sites(root, *images(args.per_site, args.pneumonia, seed))
            for norm in args.norms.split(","):
                for method in METHODS:
                    config = with_overrides(RunConfig(), {
                        "dataset": "dicom", "data_dir": str(root), "labels": str(labels),
                        "partition": "natural", "sites": 3, "image_size": args.image_size,
                        "harmonize": method, "rounds": args.rounds, "norm": norm, "seed": seed,
                        "baselines": False, "device": "cpu"})
                    started = time.perf_counter()
                    with contextlib.redirect_stdout(io.StringIO()):  # each run's own results table
                        summary = execute_run(config, Path(tmp) / "runs" / f"{norm}-{method}-{seed}",
                                              quiet)
                    key = f"{norm} / {method}"
                    entry = results.setdefault(key, {"auc": [], "sites": [], "seconds": []})
                    entry["auc"].append(summary["test"]["auc"])
                    entry["sites"].append([s["test"]["auc"] for s in summary["sites"].values()])
                    entry["seconds"].append(time.perf_counter() - started)
                    print(f"seed {seed} {key:<22} test AUC {summary['test']['auc']:.3f}  sites "
                          + " / ".join(f"{a:.3f}" for a in entry["sites"][-1]), flush=True)
    print("\nnorm / harmonize        mean test AUC   per-site test AUC (mean over seeds)   seconds")
    for key, entry in results.items():
        sites = np.mean(entry["sites"], axis=0)
        print(f"{key:<22}  {statistics.mean(entry['auc']):.3f}           "
              f"{' / '.join(f'{a:.3f}' for a in sites)}              "
              f"{statistics.mean(entry['seconds']):.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
