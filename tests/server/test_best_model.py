"""Keeping the best-validation model: the round with the best mean validation AUC is the one kept.

Hand mutations that must fail a test: keep the last snapshot instead of the best one; let the pooled
baseline keep its last round."""

from __future__ import annotations

import json

import torch

from medfed.algorithms.fedavg import FedAvg
from medfed.cli import main
from medfed.server.best_model import BestValidation
from medfed.server.round_loop import RoundResult
from medfed.types import Update


def step(strategy: FedAvg, value: float) -> None:
    strategy.open_stage()
    strategy.receive(Update("a", {"w": torch.tensor([value])}, 1, 1))
    strategy.close_stage()


def test_the_model_of_the_best_round_is_restored():
    strategy = FedAvg({"w": torch.tensor([0.0])})
    best = BestValidation(strategy)
    for r, (value, auc) in enumerate([(1.0, 0.7), (2.0, 0.9), (3.0, 0.8), (4.0, None)]):
        step(strategy, value)
        best.round_finished(RoundResult(round=r, val={"a": {"auc": auc}}))
    assert strategy.global_state["w"].item() == 4.0
    best.restore_best()
    assert strategy.global_state["w"].item() == 2.0 and best.best_round == 1


def test_with_no_score_the_last_model_stays():
    strategy = FedAvg({"w": torch.tensor([0.0])})
    best = BestValidation(strategy)
    step(strategy, 5.0)
    best.round_finished(RoundResult(round=0))
    best.restore_best()
    assert strategy.global_state["w"].item() == 5.0


def test_a_resumed_run_still_knows_the_best_round_before_its_interruption(tmp_path):
    """The best snapshot is written beside the checkpoint; a run resumed after round 2 whose later
    rounds score worse restores round 1's model, as the uninterrupted run would."""
    strategy = FedAvg({"w": torch.tensor([0.0])})
    before = BestValidation(strategy, folder=tmp_path)
    for r, (value, auc) in enumerate([(1.0, 0.7), (2.0, 0.9)]):
        step(strategy, value)
        before.round_finished(RoundResult(round=r, val={"a": {"auc": auc}}))
    resumed_strategy = FedAvg({"w": torch.tensor([2.0])})  # as restored from the checkpoint
    after = BestValidation(resumed_strategy, folder=tmp_path, resume=True)
    step(resumed_strategy, 3.0)
    after.round_finished(RoundResult(round=2, val={"a": {"auc": 0.8}}))
    after.restore_best()
    assert resumed_strategy.global_state["w"].item() == 2.0 and after.best_round == 1
    assert BestValidation(FedAvg({"w": torch.tensor([0.0])}), folder=tmp_path).best_round is None


def test_the_pooled_baseline_keeps_its_best_round_by_the_same_rule(tiny_config, tmp_path):
    """Under keep_best pooled is chosen on its validation split as the federation is on the sites':
    with a rate too small to change the model every round scores the same, so both keep round 1
    (a later equal score is no improvement). Fails if the pooled baseline keeps its last round."""
    out = tmp_path / "out"
    frozen = ["--optimizer", "sgd", "--lr", "1e-12"]
    assert main(["run", *tiny_config(3), *frozen, "--keep-best", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept_round"]["round"] == 1
    assert summary["baselines"]["pooled"]["kept_round"]["round"] == 1
    assert 0.0 <= summary["baselines"]["pooled"]["kept_round"]["validation_auc"] <= 1.0
