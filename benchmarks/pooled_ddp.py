"""The pooled baseline in one process against DistributedDataParallel over 2 worker processes
("centralized multi-node", medfed/pooled_ddp.py), whole processes, alternating.

Each run is a child process that prepares the experiment and trains the pooled baseline only
(PneumoniaMNIST from ../shared/data when it is there, else the built-in synthetic data; 5 sites
pooled; the cnn with group norm, since gloo on CPU has no SyncBatchNorm). The child writes the
pooled model's record (summary.json's baselines.pooled: wall and start-up seconds) and its test
metrics; the parent times the whole process (imports and worker start-up included).

    python benchmarks/pooled_ddp.py [--repeats 3] [--rounds 3] [--width 64] [--workers 2]
Prints each run's seconds, the medians, the speed-up and the test AUC of each (Adam: the two
models agree to float tolerance, not bit for bit). Time it on a quiet machine: on a shared one the
figures are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the medfed of this checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_backend import alternate  # whole processes, the order rotated

DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def config_dict(args: argparse.Namespace, workers: int) -> dict:
    data = ({"dataset": "medmnist", "data_file": str(args.data_file)} if args.data_file.is_file()
            else {})  # the synthetic default otherwise
    return {"seed": 0, "device": "cpu",
            "data": {**data, "sites": 5, "augment": False},
            "model": {"norm": "group", "width": args.width},
            "federation": {"rounds": args.rounds, "eval_every": 0},
            "training": {"lr_schedule": "constant"},  # as RESULTS was measured
            "execution": {"pooled_workers": workers}}


def child(args: argparse.Namespace) -> None:
    """One pooled baseline (a child process): its record and test metrics into args.out."""
    import torch

    from medfed.config_file import config_from_dict
    from medfed.experiment import prepare
    from medfed.pooled_ddp import train_pooled

    torch.set_num_threads(1 if args.workers > 1 else 2)  # 2 cores: one per worker, or both here
    setup = prepare(config_from_dict(config_dict(args, args.workers)))
    pooled = train_pooled(setup)
    args.out.write_text(json.dumps({**pooled.record(), "test": pooled.outcome.test}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=64,
                        help="the cnn's first-stage width (a multiple of 8: group norm)")
    parser.add_argument("--workers", type=int, default=2, help="DDP workers of the multi-node run")
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    work = Path(tempfile.mkdtemp(prefix="medfed-pooled-bench-"))
    me = [sys.executable, str(Path(__file__).resolve()), "--child", "--rounds", str(args.rounds),
          "--width", str(args.width), "--data-file", str(args.data_file)]
    runs = {"single": 1, f"ddp_x{args.workers}": args.workers}
    times = alternate({name: [*me, "--workers", str(n), "--out", str(work / f"{name}.json")]
                       for name, n in runs.items()}, args.repeats)
    records = {name: json.loads((work / f"{name}.json").read_text()) for name in runs}
    medians = {name: statistics.median(t) for name, t in times.items()}
    multi = f"ddp_x{args.workers}"
    figures = {
        "data": args.data_file.name if args.data_file.is_file() else "synthetic",
        "rounds": args.rounds, "width": args.width, "process_seconds": medians, "runs": times,
        "speedup_process": medians["single"] / medians[multi],
        "pooled_wall_seconds": {n: r["wall_seconds"] for n, r in records.items()},
        "worker_startup_seconds": records[multi]["startup_seconds"],
        "speedup_pooled_training": records["single"]["wall_seconds"] / records[multi]["wall_seconds"],
        "test_auc": {n: r["test"]["auc"] for n, r in records.items()},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
