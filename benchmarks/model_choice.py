"""Which model of a run to keep, judged on validation: the best round, or weight averages of rounds.

    .venv/bin/python benchmarks/model_choice.py DATA_FILE SEED ['{"training": {"lr": 0.0005}}']

FedAvg with the defaults chosen from the data (keep_best off, constant rate, so every round's
global model is the one trained), each round's global model kept; then, on the sites' validation
splits (the mean of their AUCs, the score keep_best uses) and on the test set: the last round, the
best round, the mean weights of the last 5 / 10 rounds, of the best round and its 2 neighbours
each side, and an exponential moving average (0.7) at its best round. One JSON line per run.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medfed.algorithms.aggregate import weighted_mean
from medfed.algorithms.checkpoint import from_bytes
from medfed.config_file import config_from_dict
from medfed.evaluation.metrics import compute_metrics
from medfed.experiment import Setup, metrics_on_test, prepare, train
from medfed.run_state import CHECKPOINT
from medfed.server.round_loop import RoundResult, SilentObserver
from medfed.types import StateDict

EMA = 0.7  # weight of the average so far, per round


class KeepRounds(SilentObserver):
    """Each round's global model, read from the run's checkpoint when the round ends."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.states = folder, []

    def round_finished(self, result: RoundResult) -> None:
        checkpoint, _ = from_bytes((self.folder / CHECKPOINT).read_bytes())
        self.states.append({k: v.clone() for k, v in checkpoint.part("global/").items()})


def rounds_of(setup: Setup) -> list[StateDict]:
    with tempfile.TemporaryDirectory() as folder:
        keep = KeepRounds(Path(folder))
        train(setup, "fedavg", setup.federation.sites, "fedavg", keep, checkpoints=Path(folder))
    return keep.states


def validation_auc(setup: Setup, state: StateDict) -> float:
    """The mean of the sites' validation AUCs (keep_best's score)."""
    aucs = []
    for data in setup.federation.sites.values():
        probs, _ = setup.predictor.predict(state, data.val)
        auc = compute_metrics(setup.federation.source.task, data.val.y, probs).get("auc")
        if auc is not None and np.isfinite(auc):
            aucs.append(auc)
    return float(np.mean(aucs))


def test_auc(setup: Setup, state: StateDict) -> float:
    return metrics_on_test(setup, *setup.predictor.predict(state, setup.federation.source.test))["auc"]


def mean_of(states: list[StateDict]) -> StateDict:
    return weighted_mean(states, [1.0] * len(states))


def moving_averages(states: list[StateDict]) -> list[StateDict]:
    out: list[StateDict] = []
    for state in states:
        out.append(state if not out else {k: EMA * out[-1][k] + (1 - EMA) * v if v.is_floating_point()
                                          else v for k, v in state.items()})
    return out


def candidates(setup: Setup, states: list[StateDict], vals: list[float]) -> dict[str, StateDict]:
    best = int(np.argmax(vals))
    emas = moving_averages(states)
    best_ema = int(np.argmax([validation_auc(setup, s) for s in emas]))
    return {"last": states[-1], f"best(r{best + 1})": states[best],
            "tail5": mean_of(states[-5:]), "tail10": mean_of(states[-10:]),
            "best±2": mean_of(states[max(0, best - 2):best + 3]),
            f"ema{EMA} best(r{best_ema + 1})": emas[best_ema]}


def setup_of(data_file: str, seed: int, extra: dict) -> Setup:
    """FedAvg with the defaults chosen from the data, keep_best off and a constant rate, so every
    round's global model is the one trained; extra: config sections merged over them. DATA_FILE
    "demo": the built-in synthetic data."""
    data = {} if data_file == "demo" else {"dataset": "medmnist", "data_file": data_file}
    return prepare(config_from_dict({
        "seed": seed, "device": "cpu", "baselines": False, "data": data | extra.get("data", {}),
        "federation": {"keep_best": False, **extra.get("federation", {})},
        "training": {"lr_schedule": "constant", **extra.get("training", {})}}))


def main() -> None:
    data_file, seed = sys.argv[1], int(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    setup = setup_of(data_file, seed, extra)
    states = rounds_of(setup)
    vals = [validation_auc(setup, s) for s in states]
    scored = {name: [round(validation_auc(setup, st), 4), round(test_auc(setup, st), 4)]
              for name, st in candidates(setup, states, vals).items()}
    print(json.dumps({"seed": seed, "extra": extra, "norm": setup.config.model.norm,
                      "val_curve": [round(v, 3) for v in vals], "val_test": scored}))


if __name__ == "__main__":
    main()
