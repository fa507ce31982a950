"""Early stopping on the federated validation score: the count of rounds without improvement, a
resumed run's count, each local-only site's own stop, and `medfed run --patience` end to end (the
rounds run, the baselines stopping by the same rule, summary.json, refusals).

Hand mutations that must fail a test here: count an equal score as an improvement; let unscored
rounds count; let a split without an AUC train the cap; ignore the earlier rounds of a resumed
run; never pass the stop to the round loop; let the baselines train the cap instead of stopping
on their own validation; stop before min_rounds; keep training a local-only site that has
stopped."""

from __future__ import annotations

import json

import pytest

from medfed.cli import main
from medfed.config_file import config_from_dict
from medfed.errors import ConfigError
from medfed.server.early_stop import EarlyStop, SiteEarlyStop, validation_score


def val(auc: float | None) -> dict:
    return {"a": {"auc": auc}, "b": {"auc": None}}


def test_the_score_is_the_mean_auc_of_the_sites_that_have_one():
    assert validation_score({"a": {"auc": 0.8}, "b": {"auc": 0.6}, "c": {"auc": None}}) == 0.7
    assert validation_score({"a": {"auc": float("nan")}}) is None


def test_patience_counts_scored_rounds_since_the_best_and_an_improvement_resets_it():
    stop = EarlyStop(2)
    for auc, reached in [(0.7, False), (0.8, False), (0.8, False), (0.75, True)]:
        stop.record(val(auc))
        assert stop.reached is reached, auc  # an equal score is no improvement
    stop = EarlyStop(2)
    for auc in (0.7, 0.6, 0.9, 0.6):
        stop.record(val(auc))
    assert not stop.reached and stop.best == 0.9


def test_rounds_that_were_not_scored_neither_count_nor_reset():
    stop = EarlyStop(1)
    stop.record(val(0.9))
    stop.record({})  # eval_every > 1: no validation this round
    stop.record({})
    assert not stop.reached
    stop.record(val(0.5))
    assert stop.reached


def test_splits_without_an_auc_show_no_improvement_so_the_run_stops_at_its_minimum_rounds():
    """Every split scored holds one class: no AUC, so nothing shows that more rounds help; the
    run stops at min_rounds, as it would with fixed rounds, instead of training the cap."""
    stop = EarlyStop(2, min_rounds=4)
    for _ in range(3):
        stop.record(val(None))
    assert not stop.reached and stop.since_best == 3 and stop.best is None
    stop.record(val(None))
    assert stop.reached and stop.rounds == 4
    late = EarlyStop(1)
    late.record(val(0.9))
    late.record(val(None))
    assert late.reached and late.best == 0.9


def test_a_resumed_run_counts_from_its_earlier_rounds():
    assert EarlyStop(2, [val(0.9), val(0.8), val(0.8)]).reached
    resumed = EarlyStop(2, [val(0.9), val(0.8)])
    assert not resumed.reached and resumed.since_best == 1


def test_patience_never_stops_a_run_before_its_minimum_rounds():
    stop = EarlyStop(2, min_rounds=5)
    for auc in (0.9, 0.5, 0.5, 0.5):
        stop.record(val(auc))
    assert not stop.reached  # 3 rounds without improvement, but only 4 rounds run
    stop.record({})  # an unscored round still counts as a round run
    assert stop.reached and stop.rounds == 5
    assert EarlyStop(2, [val(0.9), val(0.5), val(0.5), val(0.5), val(0.5)], min_rounds=5).reached


def test_each_site_stops_on_its_own_score_and_the_run_once_all_have():
    stop = SiteEarlyStop(["a", "b"], patience=1, min_rounds=2)
    stop.record({"a": {"auc": 0.9}, "b": {"auc": 0.6}})
    stop.record({"a": {"auc": 0.8}, "b": {"auc": 0.7}})  # a: no better, b: better
    assert stop.training(["a", "b"]) == ["b"] and not stop.reached
    stop.record({"a": {"auc": 0.99}, "b": {"auc": 0.7}})  # a has stopped: its score is ignored
    assert stop.training(["a", "b"]) == [] and stop.reached
    assert stop.stopped_early(3, cap=5) == {"rounds_run": {"a": 2, "b": 3}, "of": 5, "patience": 1}
    assert stop.stopped_early(3, cap=2) is None  # every site ran the cap


def test_a_site_without_a_score_this_round_still_counts_it_as_run():
    stop = SiteEarlyStop(["a"], patience=1, min_rounds=3)
    stop.record({"a": {"auc": 0.9}})
    stop.record({"a": {"auc": 0.5}})
    stop.record({})  # its evaluation failed, or the round was not scored
    assert stop.reached and stop.rounds_run() == {"a": 3}


def test_a_local_only_site_whose_split_holds_one_class_stops_at_the_minimum_rounds():
    """PneumoniaMNIST under label skew gives some sites a one-class validation split: no AUC. They
    trained the cap of 40 rounds, twice the fixed 20 the cap replaced; now they stop at 20."""
    stop = SiteEarlyStop(["a", "b"], patience=2, min_rounds=3)
    for auc in (0.6, 0.7, 0.8):
        stop.record({"a": {"auc": auc}, "b": {"auc": None}})
    assert stop.training(["a", "b"]) == ["a"] and stop.rounds_run() == {"a": 3, "b": 3}


def test_patience_below_one_is_a_programming_error():
    with pytest.raises(ValueError, match="at least 1"):
        EarlyStop(0)


# A rate so small the model cannot change: every round scores the same, so patience P stops the
# run after round 1 + P, whatever the data.
FROZEN = ["--optimizer", "sgd", "--lr", "1e-12"]


def test_a_run_stops_once_validation_stops_improving_and_so_do_the_baselines(tiny_config, tmp_path,
                                                                             capsys):
    """With the model frozen every score repeats, so patience 2 stops the federation after round 3
    of 6, and the pooled baseline and each local-only site that has a validation AUC by the same
    rule on their own splits (a site whose split holds one class has no AUC, shows no improvement,
    and stops after `patience` rounds, min_rounds being 0 here)."""
    out = tmp_path / "out"
    assert main(["run", *tiny_config(6), *FROZEN, "--patience", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    rounds = (out / "rounds.jsonl").read_text().splitlines()
    assert len(rounds) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] == {"rounds_run": 3, "of": 6, "patience": 2,
                                        "best_validation_auc": pytest.approx(
                                            validation_score(json.loads(rounds[0])["val"]))}
    assert "stopped after round 3 of 6" in err
    assert summary["baselines"]["pooled"]["stopped_early"]["rounds_run"] == 3
    local = summary["baselines"]["local"]
    scored = {site for site, m in json.loads(rounds[0])["val"].items() if m.get("auc") is not None}
    assert scored, "the fixture must give some site a two-class validation split"
    assert {site: local[site]["rounds_run"] for site in local} == {
        site: 3 if site in scored else 2 for site in local}


def test_without_patience_every_round_runs(tiny_config, tmp_path):
    out = tmp_path / "out"
    assert main(["run", *tiny_config(4), *FROZEN, "--no-baselines", "--out", str(out)]) == 0
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 4
    assert "stopped_early" not in json.loads((out / "summary.json").read_text())


def test_a_negative_patience_is_refused_in_one_line(tiny_config, tmp_path, capsys):
    assert main(["run", *tiny_config(2), "--patience", "-1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "patience must be >= 0" in err and "Traceback" not in err


def test_patience_without_validation_rounds_is_refused():
    with pytest.raises(ConfigError, match="eval_every = 0 never computes"):
        config_from_dict({"federation": {"patience": 2, "eval_every": 0}})
