"""Federated evaluation from aggregates: is the AUC pooled from site histograms the raw pooled AUC?

Trains a model briefly on PneumoniaMNIST (FedAvg, 5 sites, Dirichlet(0.5) label skew with sizes
20:25:15:30:22, baselines off), then splits the test set over 5 sites the same way (each site holds
its share of the test split) and lets each site score its share and send only a ScoreSummary
(evaluation/federated.py). Prints the AUC of the raw pooled predictions (scikit-learn) and of the
combined summaries, their difference (target: within 0.002) with the bound the bins guarantee,
both DeLong intervals, whether the threshold metrics agree exactly, a Youden operating point chosen
on the training sites' pooled validation summaries, and the bytes of each site's summary JSON.

    python benchmarks/federated_eval.py [--rounds 3] [--seed 0] [--data-file PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medfed.config import RunConfig  # noqa: E402
from medfed.config_file import config_from_dict  # noqa: E402
from medfed.data.dataset import Samples  # noqa: E402
from medfed.data.partition import dirichlet  # noqa: E402
from medfed.evaluation import federated as fed  # noqa: E402
from medfed.evaluation import statistics as st  # noqa: E402
from medfed.evaluation.metrics import compute_metrics  # noqa: E402
from medfed.experiment import Setup, prediction_states, prepare, site_states, train  # noqa: E402
from medfed.types import Task  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
PROPORTIONS = (20, 25, 15, 30, 22)
THRESHOLD_KEYS = ("accuracy", "precision", "recall", "f1", "sensitivity", "specificity")


def config(data_file: Path, rounds: int, seed: int) -> RunConfig:
    return config_from_dict({
        "seed": seed, "device": "cpu", "baselines": False,
        "data": {"dataset": "medmnist", "data_file": str(data_file), "sites": 5,
                 "partition": "dirichlet", "alpha": 0.5, "proportions": list(PROPORTIONS)},
        "federation": {"rounds": rounds, "eval_every": 0},
        "training": {"lr_schedule": "constant"},  # as RESULTS was measured
    })


def score_at_sites(setup: Setup, states: list, shares: list[np.ndarray], samples: Samples
                   ) -> tuple[list[fed.ScoreSummary], np.ndarray, np.ndarray]:
    """Each site scores its share and summarizes it; the raw scores are kept here only to compare."""
    summaries, probs, labels = [], [], []
    for share in shares:
        part = samples.subset(share)
        p, loss = setup.predictor.predict_mean(states, part)
        summaries.append(fed.summarize(Task.BINARY, part.y, p, loss))
        probs.append(p)
        labels.append(part.y)
    return summaries, np.concatenate(probs), np.concatenate(labels)


def validation_summaries(setup: Setup, strategy: object) -> list[fed.ScoreSummary]:
    sites = setup.federation.sites
    out = []
    for site, data in sites.items():
        p, loss = setup.predictor.predict_mean(site_states(strategy, site, list(sites)), data.val)
        out.append(fed.summarize(Task.BINARY, data.val.y, p, loss))
    return out


def show(interval: st.Interval) -> str:
    return f"{interval.estimate:.4f} [{interval.low:.4f}, {interval.high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-file", type=Path, default=DATA)
    args = parser.parse_args()
    if not args.data_file.exists():
        print(f"skip: {args.data_file} not found (PneumoniaMNIST .npz; pass --data-file)")
        return
    started = time.perf_counter()
    setup = prepare(config(args.data_file, args.rounds, args.seed))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    test = setup.federation.source.test
    shares = dirichlet(test.y, 5, 0.5, np.random.default_rng(args.seed), proportions=PROPORTIONS)
    states = prediction_states(outcome.strategy, list(setup.federation.sites))
    summaries, probs, y = score_at_sites(setup, states, shares, test)
    pooled = fed.combine(summaries)
    raw_auc, got = roc_auc_score(y, probs[:, 1]), fed.summary_metrics(pooled)
    raw = compute_metrics(Task.BINARY, y, probs)
    print(f"PneumoniaMNIST, FedAvg {args.rounds} rounds, seed {args.seed}: trained and scored in "
          f"{time.perf_counter() - started:.0f} s")
    print("test sites (images, pneumonia share): " + ", ".join(
        f"{len(s)} ({test.y[s].mean():.2f})" for s in shares))
    print(f"AUC raw pooled (sklearn)     {raw_auc:.6f}")
    print(f"AUC combined summaries       {got['auc']:.6f}")
    print(f"difference                   {got['auc'] - raw_auc:+.2e} (target |d| <= 0.002; "
          f"guaranteed |d| <= {fed.auc_tie_bound(pooled):.2e}, half the tied pairs' share)")
    print(f"DeLong 95% CI raw            {show(st.delong_ci(y, probs[:, 1]))}")
    print(f"DeLong 95% CI summaries      {show(fed.auc_interval(pooled))}")
    same = all(got[k] == raw[k] for k in THRESHOLD_KEYS) and got["n"] == raw["n"]
    print(f"threshold metrics at 0.5 identical: {same} (accuracy {got['accuracy']:.4f}, "
          f"sensitivity {got['sensitivity']:.4f}, specificity {got['specificity']:.4f})")
    threshold = fed.choose_threshold(fed.combine(validation_summaries(setup, outcome.strategy)))
    sens, spec = fed.rates_at(pooled, threshold)
    print(f"Youden threshold on pooled validation summaries {threshold:.4f}: test sensitivity "
          f"{sens:.4f}, specificity {spec:.4f} (raw: {st.rates_at(y, probs[:, 1], threshold)})")
    sizes = [len(json.dumps(s.to_json(), separators=(",", ":"))) for s in summaries]
    print(f"summary JSON per site (bytes): {sizes}")


if __name__ == "__main__":
    main()
