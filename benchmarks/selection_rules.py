"""Which validation score should pick the kept round: the mean of the sites' AUCs (what keep_best
and patience use) or one AUC over all sites' validation cases pooled (what a federation could get
from the sites' score summaries, evaluation/federated.py).

    .venv/bin/python benchmarks/selection_rules.py DATA_FILE SEED ['{"data": {"alpha": 0.5}}']

FedAvg with the defaults chosen from the data (keep_best off, constant rate, so every round's
global model is the one trained; model_choice.py keeps each). Per round: both validation scores and
the test AUC; then the round each score picks and its test AUC. One JSON line per run; DATA_FILE
"demo" is the built-in synthetic data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_choice import rounds_of, setup_of, test_auc

from medfed.evaluation.metrics import compute_metrics
from medfed.experiment import Setup
from medfed.types import StateDict

RULES = ("mean_of_sites", "pooled")


def scores(setup: Setup, state: StateDict) -> dict[str, float]:
    task = setup.federation.source.task
    aucs, probs, labels = [], [], []
    for data in setup.federation.sites.values():
        p, _ = setup.predictor.predict(state, data.val)
        auc = compute_metrics(task, data.val.y, p).get("auc")
        if auc is not None and np.isfinite(auc):
            aucs.append(auc)
        probs.append(p)
        labels.append(data.val.y)
    pooled = compute_metrics(task, np.concatenate(labels), np.concatenate(probs))["auc"]
    return {"mean_of_sites": float(np.mean(aucs)), "pooled": float(pooled),
            "test": float(test_auc(setup, state))}


def main() -> None:
    data_file, seed = sys.argv[1], int(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    setup = setup_of(data_file, seed, extra)
    rows = [scores(setup, state) for state in rounds_of(setup)]
    picked = {}
    for rule in RULES:
        best = int(np.argmax([r[rule] for r in rows]))
        picked[rule] = {"round": best + 1, "test": round(rows[best]["test"], 4)}
    print(json.dumps({"seed": seed, "data": data_file, "extra": extra, "picked": picked,
                      "best_test_any_round": round(max(r["test"] for r in rows), 4),
                      "curve": [{k: round(v, 3) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
