"""Keeping the best-validation model: the round with the best mean validation AUC is the one kept.

Hand mutations that must fail a test: keep the last snapshot instead of the best one; let the pooled
baseline or a local-only site keep its last round; keep a local-only site's model by reference (the
next round's update would overwrite it)."""

from __future__ import annotations

import json

import torch

from medfed.algorithms.ensemble import LocalEnsemble
from medfed.algorithms.fedavg import FedAvg
from medfed.cli import main
from medfed.server.best_model import BestPerSite, BestValidation
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


def test_each_local_only_site_keeps_the_round_of_its_own_best_score():
    strategy = LocalEnsemble({"w": torch.tensor([0.0])})
    best = BestPerSite(strategy)
    rounds = [({"a": 1.0, "b": 1.0}, {"a": 0.7, "b": 0.9}),
              ({"a": 2.0, "b": 2.0}, {"a": 0.8, "b": 0.6}),
              ({"a": 3.0, "b": 3.0}, {"a": 0.75, "b": None})]
    for r, (values, aucs) in enumerate(rounds):
        for site, value in values.items():
            strategy.receive(Update(site, {"w": torch.tensor([value])}, 1, 1))
        best.round_finished(RoundResult(round=r, val={s: {"auc": a} for s, a in aucs.items()}))
    best.restore_best()
    assert strategy.site_state("a")["w"].item() == 2.0 and strategy.site_state("b")["w"].item() == 1.0
    assert best.kept() == {"a": {"round": 2, "validation_auc": 0.8},
                           "b": {"round": 1, "validation_auc": 0.9}}


def test_a_kept_site_model_is_a_copy_that_later_training_cannot_change():
    strategy = LocalEnsemble({"w": torch.tensor([0.0])})
    best = BestPerSite(strategy)
    state = {"w": torch.tensor([1.0])}
    strategy.receive(Update("a", state, 1, 1))
    best.round_finished(RoundResult(round=0, val={"a": {"auc": 0.9}}))
    state["w"].add_(5.0)  # a trainer that reuses its tensors in place
    best.restore_best()
    assert strategy.site_state("a")["w"].item() == 1.0


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


def test_the_baselines_keep_their_best_round_by_the_same_rule(tiny_config, tmp_path):
    """Under keep_best pooled is chosen on its validation split as the federation is on the sites':
    with a rate too small to change the model every round scores the same, so both keep round 1
    (a later equal score is no improvement), as does each local-only site with a score on its own
    split. Fails if the pooled baseline or a local-only site keeps its last round."""
    out = tmp_path / "out"
    frozen = ["--optimizer", "sgd", "--lr", "1e-12"]
    assert main(["run", *tiny_config(3), *frozen, "--keep-best", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept_round"]["round"] == 1
    assert summary["baselines"]["pooled"]["kept_round"]["round"] == 1
    assert 0.0 <= summary["baselines"]["pooled"]["kept_round"]["validation_auc"] <= 1.0
    kept = {site: m.get("kept_round") for site, m in summary["baselines"]["local"].items()}
    assert any(kept.values()), "the fixture must give some site a two-class validation split"
    assert all(k is None or k["round"] == 1 for k in kept.values())
