"""Server peak memory against the number of simulated sites (issue 16, part 3).

For each number of sites, one whole process (a fresh interpreter, so no measurement inherits
another's heap) builds a synthetic federation of SAMPLES_PER_SITE images a site, then runs FedAvg
with the default small cnn (one local epoch: a step a site and round) in simulation (in-process backend; no baselines, no per-round scoring,
so the federated training alone is measured) as medfed.experiment.train runs it. The process
reports:

- data MB: its resident memory once the federation is built (Python, torch and the sites' data);
- rounds peak MB: its peak resident memory during the federated rounds above that (the peak is
  reset after the data are built, through /proc/self/clear_refs), i.e. what the server, the
  transport and the sites' trainers add on top of the data. Flat in the number of sites means
  streaming works;
- training peak MB: the same over the whole of train(), which also scores the held-out test set.
  That set has TEST_IMAGES images at every number of sites (the synthetic source gives each site
  at least one, so a smaller set would grow with the sites and be scored in more batches: glibc
  then serves the second batch's activations from its heap, ~40 MB above the first's).

--before DIR measures another checkout too (e.g. `git archive <commit> | tar -x -C DIR`), each
number of sites run with both trees, alternating, so both see the same machine load.

    python benchmarks/scale_memory.py [--sites 5,50,100,500] [--rounds 2] [--before DIR] [--json PATH]

Linux only (/proc). The API is used rather than `medfed run --sites N`: the CLI also writes the
report (figures per site) and scores every site, which are not the server's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES_PER_SITE = 8  # synthetic images a site (training + validation)
TEST_IMAGES = 1000  # held-out test images at every number of sites (one at least per site)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"/proc/self/status has no {field}")


class RoundsPeak:
    """A round observer reading the peak resident memory when the last round is done."""

    def __init__(self, rounds: int) -> None:
        self.rounds, self.mb = rounds, 0.0

    def round_started(self, round_index: int, sites: list) -> None:
        pass

    def site_finished(self, round_index: int, site: str, loss: float | None) -> None:
        pass

    def round_finished(self, result) -> None:
        if result.round == self.rounds - 1:
            self.mb = _status_mb("VmHWM")


def measure_here(sites: int, rounds: int) -> dict:
    """One measurement in this process (the child's side)."""
    from medfed.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainingConfig
    from medfed.experiment import prepare, train

    if sites > TEST_IMAGES:
        raise SystemExit(f"at most {TEST_IMAGES} sites (one test image a site at least)")
    config = RunConfig(device="cpu", baselines=False, model=ModelConfig(model="cnn"),
                       data=DataConfig(sites=sites, synthetic_samples=SAMPLES_PER_SITE * sites,
                                       synthetic_test=TEST_IMAGES, augment=False),
                       federation=FederationConfig(rounds=rounds, eval_every=0, keep_best=False),
                       training=TrainingConfig(local_epochs=1))  # one epoch: one step a site
    setup = prepare(config)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    data_mb = _status_mb("VmRSS")
    start = time.perf_counter()
    peak = RoundsPeak(rounds)
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg", observer=peak)
    return {"sites": sites, "data_mb": round(data_mb, 1),
            "rounds_peak_mb": round(peak.mb - data_mb, 1),
            "train_peak_mb": round(_status_mb("VmHWM") - data_mb, 1),
            "train_seconds": round(time.perf_counter() - start, 1),
            "test_auc": round(outcome.test["auc"], 4)}


def measure(code: Path, sites: int, rounds: int) -> dict:
    """One measurement in a fresh process importing medfed from `code`."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--one", str(sites), "--rounds", str(rounds)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="5,50,100,500")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, help="another checkout to measure too")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_here(args.one, args.rounds)))
        return
    trees = {"after": REPO} | ({"before": args.before.resolve()} if args.before else {})
    rows = []
    columns = ("data MB", "rounds peak MB", "training peak MB", "s")
    print(f"| sites | {' | '.join(f'{t}: {c}' for t in trees for c in columns)} |")
    print("|---" * (1 + len(columns) * len(trees)) + "|")
    for n in (int(s) for s in args.sites.split(",")):
        row = {name: measure(code, n, args.rounds) for name, code in trees.items()}
        rows.append(row)
        cells = [f"{r['data_mb']} | {r.get('rounds_peak_mb', '-')} | {r['train_peak_mb']} | "
                 f"{r['train_seconds']}" for r in row.values()]
        print(f"| {n} | {' | '.join(cells)} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
