"""The Ray backend against the in-process one, whole processes, alternating.

(a) reference: the Flower peer's FedAvg workload (../shared/peers/flower/workload.py: 5 sites of
    random 28x28 images, its small CNN, 5 rounds x 1 epoch, batch 32, Adam 1e-3) three ways, each
    a whole process (imports, Ray start and stop included, as Flower's figure is): medfed on Ray
    (2 workers of 1 CPU), medfed in process, and the peer's plain_loop.py. medfed runs it through
    its own parts (SiteRecipe with the workload's network, the transport, FedAvg, run_rounds);
    Flower's own time is in its README (25.7 s against 9.3 s for the plain loop on this machine
    class): quote ratios to the plain loop, not seconds.
(b) heavy: PneumoniaMNIST, 5 sites, the cnn at --width 60 (~1M parameters), `medfed run` with
    --backend ray --max-workers 2 against the default in-process backend; both summaries' test
    metrics must be equal (same seed, same result).

    python benchmarks/ray_backend.py reference [--repeats 3]
    python benchmarks/ray_backend.py heavy [--repeats 3] [--rounds 3] [--width 60]
Prints each run's seconds, the medians and the ratios. Time it on a quiet machine: on a shared one
the figures are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOWER = REPO.parent / "shared" / "peers" / "flower"
sys.path.insert(0, str(REPO))  # the medfed of this checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compression import DATA, base_config

from medfed.output import write_config


def environment() -> dict[str, str]:
    """This checkout and the Flower peer importable (in every Ray worker too), one OpenMP thread
    per process unless a process asks torch for more."""
    path = os.pathsep.join([str(REPO), str(FLOWER), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0"}


def timed(command: list[str]) -> float:
    """Wall seconds of a whole process; its failure ends the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark invalid: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def alternate(commands: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Each command once per repeat, the order rotated so none always runs first."""
    names, times = list(commands), {name: [] for name in commands}
    for i in range(repeats):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            times[name].append(timed(commands[name]))
        print(f"repeat {i + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names),
              flush=True)
    return times


def reference_child(backend: str) -> None:
    """One medfed FedAvg run of the Flower workload, in process or on Ray (a child process)."""
    import numpy as np
    import torch
    import workload as w

    from medfed.algorithms.fedavg import FedAvg
    from medfed.client.trainer import TrainOptions
    from medfed.config_file import config_from_dict
    from medfed.data.dataset import Samples, SiteData
    from medfed.data.transforms import Preprocess
    from medfed.models import ModelSpec
    from medfed.server.round_loop import RoundPlan, run_rounds
    from medfed.simulated_site import SiteRecipe
    from medfed.transport.inprocess import InProcessTransport
    from medfed.transport.ray_pool import RayPool
    from medfed.types import Task

    torch.set_num_threads(2 if backend == "inprocess" else 1)  # as plain_loop.py / Flower's clients
    config = config_from_dict({"seed": 0, "device": "cpu", "data": {"augment": False},
                               "execution": {"backend": backend}})
    recipe = SiteRecipe(config, ModelSpec(2, 1, 2, "batch"), Task.BINARY, 2,
                        Preprocess(max_value=1.0, spatial_size=None), network=w.model)
    sites = {}
    for k in range(w.SITES):
        x, y = (t.numpy() for t in w.site_data(k))
        sites[f"site{k}"] = SiteData(f"site{k}", Samples(x, y), Samples(x[:2].copy(), y[:2].copy()))
    options = TrainOptions(epochs=w.EPOCHS, batch_size=w.BATCH, lr=w.LR, optimizer="adam")

    def fedavg(transport) -> None:
        history = run_rounds(FedAvg(w.model().state_dict()), transport, list(sites),
                             RoundPlan(rounds=w.ROUNDS, eval_every=0), options,
                             np.random.default_rng(0))
        failed = {s: why for r in history for s, why in r.failed.items()}
        if failed:
            sys.exit(f"sites failed: {failed}")

    if backend == "inprocess":
        device = torch.device("cpu")
        fedavg(InProcessTransport({s: recipe.trainer(k, d, device)
                                   for k, (s, d) in enumerate(sites.items())}))
        return
    with RayPool.open(config) as pool:
        fedavg(pool.transport(sites, recipe, None))


def reference(args: argparse.Namespace) -> dict:
    if not (FLOWER / "workload.py").is_file():
        sys.exit(f"skipped: the Flower peer is not at {FLOWER}")
    me = [sys.executable, str(Path(__file__).resolve())]
    times = alternate({"medfed_ray": [*me, "child", "ray"],
                       "medfed_inprocess": [*me, "child", "inprocess"],
                       "plain": [sys.executable, str(FLOWER / "plain_loop.py")]}, args.repeats)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"seconds": medians, "runs": times,
            "ray_over_plain": medians["medfed_ray"] / medians["plain"],
            "inprocess_over_plain": medians["medfed_inprocess"] / medians["plain"],
            "flower_over_plain_readme": round(25.7 / 9.3, 3)}


def heavy(args: argparse.Namespace) -> dict:
    if not args.data_file.is_file():
        sys.exit(f"skipped: {args.data_file} is absent (PneumoniaMNIST, pneumoniamnist.npz)")
    work = Path(tempfile.mkdtemp(prefix="medfed-ray-bench-"))
    write_config(work, base_config(args.data_file, args.rounds, 0, args.width))
    run = [sys.executable, "-m", "medfed", "run", "--config", str(work / "config.toml")]
    times = alternate({"ray": [*run, "--out", str(work / "ray"), "--backend", "ray",
                               "--max-workers", "2"],
                       "inprocess": [*run, "--out", str(work / "inprocess")]}, args.repeats)
    tests = [json.loads((work / b / "summary.json").read_text())["test"]
             for b in ("ray", "inprocess")]
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"seconds": medians, "runs": times, "rounds": args.rounds, "width": args.width,
            "speedup_ray": medians["inprocess"] / medians["ray"],
            "same_test_metrics": tests[0] == tests[1], "test_auc": tests[0]["auc"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("reference", "heavy", "child"))
    parser.add_argument("backend", nargs="?", choices=("inprocess", "ray"),
                        help="child only: the backend of one reference run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="heavy: federated rounds")
    parser.add_argument("--width", type=int, default=60, help="heavy: the cnn's first-stage width")
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.workload == "child":
        reference_child(args.backend or "inprocess")
        return 0
    figures = reference(args) if args.workload == "reference" else heavy(args)
    figures["load_average"] = os.getloadavg()
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
