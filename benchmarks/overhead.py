"""What medfed's federation machinery costs on top of the training it drives.

One process runs the same FedAvg workload two ways, alternately, --repeats times:

(a) medfed: SiteTrainer per site, InProcessTransport, the FedAvg strategy and run_rounds, wired
    as medfed.experiment.train wires them. The transport really encodes every model it carries as
    safetensors bytes and decodes it again (server -> site and site -> server), every update is
    checked before aggregation, and every batch goes through the MONAI Preprocess; all of that is
    in the ratio.
(b) bare: the compute floor, what the Flower peer's plain_loop.py does: per round and site a fresh
    model loaded with the global state, a plain Adam loop over in-order batches, a weighted average.

The workload is the Flower reference one (../shared/peers/flower/workload.py: 5 sites of
400/500/300/600/440 random 28x28 images, its small CNN, 5 rounds x 1 local epoch, batch 32, Adam
1e-3), so medfed's ratio can be quoted beside Flower's against the same plain loop. Both timings
include building the data and the models, as plain_loop.py's does. The sample-steps must match:
medfed shuffles and drops a final batch of one sample, which these site sizes never produce; the
script counts both paths' optimizer steps and refuses to report a ratio if they differ.
Flower's 2.75-2.88x times whole processes (imports and Ray start-up included); this ratio times
the federated training only, in one warm process. Run it on an idle machine: on a busy 2-core
one, two torch threads per path oversubscribe the cores and the timings swing by several times
(--threads 1 is steadier there).

    python benchmarks/overhead.py [--repeats 3] [--threads 2] [--json PATH]
Prints medfed_seconds, bare_seconds and overhead_ratio (medians; target <= 1.10), and
overhead_ratio_best (fastest over fastest run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FLOWER = REPO.parent / "shared" / "peers" / "flower"
sys.path.insert(0, str(REPO))  # the medfed of this checkout, installed or not

from medfed.algorithms.fedavg import FedAvg  # noqa: E402
from medfed.client.trainer import SiteTrainer, TrainOptions  # noqa: E402
from medfed.data.dataset import Samples, SiteData  # noqa: E402
from medfed.data.transforms import Preprocess  # noqa: E402
from medfed.server.round_loop import RoundPlan, run_rounds  # noqa: E402
from medfed.transport.inprocess import InProcessTransport  # noqa: E402
from medfed.types import SiteId, StateDict, Task, Update  # noqa: E402

VAL_SAMPLES = 2  # SiteData needs a validation split; a separate copy, never trained on


@dataclass(frozen=True)
class Run:
    seconds: float
    steps: int  # optimizer steps over all rounds and sites
    evaluations: int = 0  # site validations run_rounds made (none are asked for)


class CountingTransport(InProcessTransport):
    """The in-process transport, also summing the optimizer steps the sites report."""

    steps: int = 0

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        update = super().train(site, state, options)
        self.steps += update.n_steps
        return update


def run_medfed(w: ModuleType) -> Run:
    """w's workload through medfed's in-process FedAvg."""
    start = time.perf_counter()
    preprocess = Preprocess(max_value=1.0, spatial_size=None)
    trainers = {}
    for k in range(w.SITES):
        x, y = (t.numpy() for t in w.site_data(k))
        data = SiteData(f"site{k}", Samples(x, y),
                        Samples(x[:VAL_SAMPLES].copy(), y[:VAL_SAMPLES].copy()))
        trainers[data.site] = SiteTrainer(data, w.model(), Task.BINARY, preprocess,
                                          torch.device("cpu"), seed=k, augment=False)
    transport = CountingTransport(trainers)
    strategy = FedAvg(w.model().state_dict())
    options = TrainOptions(epochs=w.EPOCHS, batch_size=w.BATCH, lr=w.LR, optimizer="adam")
    plan = RoundPlan(rounds=w.ROUNDS, eval_every=0)
    rng = np.random.default_rng(0)
    history = run_rounds(strategy, transport, list(trainers), plan, options, rng)
    seconds = time.perf_counter() - start
    failed = {site: why for r in history for site, why in r.failed.items()}
    if failed:  # the round loop records a site's crash and goes on; a benchmark must not
        sys.exit(f"benchmark invalid: medfed sites failed: {failed}")
    return Run(seconds, transport.steps, sum(len(r.val) for r in history))


def run_bare(w: ModuleType) -> Run:
    """plain_loop.py's loop (its local_train; steps counted as its batches)."""
    start = time.perf_counter()
    data = [w.site_data(k) for k in range(w.SITES)]
    g = w.model()
    steps = 0
    for _ in range(w.ROUNDS):
        states = []
        for k in range(w.SITES):
            m = w.model()
            m.load_state_dict(g.state_dict())
            w.local_train(m, *data[k])
            steps += w.EPOCHS * -(-len(data[k][0]) // w.BATCH)
            states.append((m.state_dict(), w.SIZES[k]))
        n = sum(s for _, s in states)
        g.load_state_dict({key: sum(sd[key] * (s / n) for sd, s in states) for key in states[0][0]})
    return Run(time.perf_counter() - start, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating (a, b) pairs to time")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both paths")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not (FLOWER / "workload.py").is_file():
        print(f"skipped: ../shared/peers/flower not found ({FLOWER})")
        return 0
    sys.path.insert(0, str(FLOWER))
    import workload as w

    torch.set_num_threads(args.threads)
    run_medfed(w), run_bare(w)  # untimed warm-up: first-call costs belong to neither side

    medfed_times, bare_times = [], []
    for i in range(args.repeats):
        runs = {}
        # Alternate which path goes first, so neither always inherits the other's leftovers.
        for name in ("medfed", "bare") if i % 2 == 0 else ("bare", "medfed"):
            gc.collect()
            runs[name] = run_medfed(w) if name == "medfed" else run_bare(w)
        medfed, bare = runs["medfed"], runs["bare"]
        medfed_times.append(medfed.seconds)
        bare_times.append(bare.seconds)
        print(f"repeat {i + 1}: medfed {medfed.seconds:.3f} s, bare {bare.seconds:.3f} s, "
              f"ratio {medfed.seconds / bare.seconds:.3f}", flush=True)
        if medfed.steps != bare.steps:
            sys.exit(f"benchmark invalid: medfed took {medfed.steps} optimizer steps, the bare "
                     f"loop {bare.steps}; the two paths do not train on the same sample-steps")

    medfed_s, bare_s = statistics.median(medfed_times), statistics.median(bare_times)
    figures = {"medfed_seconds": round(medfed_s, 3), "bare_seconds": round(bare_s, 3),
               "overhead_ratio": round(medfed_s / bare_s, 3),
               # fastest run over fastest run: the least disturbed pair on a shared machine
               "overhead_ratio_best": round(min(medfed_times) / min(bare_times), 3),
               "steps_medfed": medfed.steps, "steps_bare": bare.steps,
               "medfed_val_evaluations": medfed.evaluations,
               "medfed_runs": medfed_times, "bare_runs": bare_times,
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_average": os.getloadavg()}
    for key in ("medfed_seconds", "bare_seconds", "overhead_ratio", "overhead_ratio_best",
                "steps_medfed", "steps_bare", "medfed_val_evaluations"):
        value = figures[key]
        print(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    print("load_average " + " ".join(f"{v:.2f}" for v in figures["load_average"]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
