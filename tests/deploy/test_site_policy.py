"""A site's own policy and privacy ledger, enforced at the site (the coordinator cannot override
them). Adversary: a coordinator that proposes a plan the site did not agree to, or that restarts the
site to reset its privacy budget.

Deliberate breaks that make a test here fail (tried by hand): the ledger not read at start-up
(epsilon restarts at 0: `continues` fails); the ledger written after the update is returned
(`written_before` fails); the policy's max_epsilon not applied to the budget (`refuses past`
fails); share_* defaults that ignore DP (`under_dp_nothing_unaccounted` fails); refusal() ignoring
allow_split_learning (`split_learning_only_by_opt_in` fails).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medfed.config_file import config_from_dict, to_toml
from medfed.deploy.site_config import load_site_config
from medfed.deploy.site_data import load_site_data
from medfed.deploy.site_policy import SitePolicy
from medfed.deploy.site_worker import PlanRefused, SiteWorker, Welcome
from medfed.errors import ConfigError, IncompatibleUpdate, PrivacyBudgetExhausted
from medfed.experiment import prepare
from medfed.privacy.ledger import NAME, PrivacyLedger
from medfed.transport.codec import encode_state

SYNTHETIC = {"dataset": "synthetic", "sites": 3, "synthetic_samples": 60, "synthetic_test": 20,
             "image_size": 16}
SITES = ["site-a", "site-b", "site-c"]
PLAIN = {"seed": 0, "device": "cpu", "data": SYNTHETIC, "federation": {"rounds": 1}}
DP = {**PLAIN, "privacy": {"dp_sgd": True, "noise_multiplier": 1.0}}
SPLIT = {**PLAIN, "model": {"model": "cnn"}, "federation": {"rounds": 1, "algorithm": "split"}}


def worker(raw: dict, policy: dict | None = None, state: Path | None = None, site: str = "site-a"
           ) -> SiteWorker:
    local = load_site_data(load_site_config(None, site, SYNTHETIC))
    welcome = Welcome.parse(to_toml(config_from_dict(raw)), json.dumps(
        {"task": local.schema.to_json(), "index": SITES.index(site), "sites": SITES}))
    return SiteWorker(local, welcome, site, SitePolicy.from_dict(policy or {}), state)


def blob(raw: dict = PLAIN) -> bytes:
    """The coordinator's model for this plan (under DP-SGD the defaults pick another model)."""
    return encode_state(prepare(config_from_dict(raw)).initial)


@pytest.mark.parametrize("raw, message", [
    ({"max_eps": 1}, "unknown key in \\[policy\\]"),
    ({"max_epsilon": "eight"}, "max_epsilon must be a number"),
    ({"max_epsilon": 0}, "max_epsilon must be > 0"),
    ({"share_training_loss": 1}, "must be true or false"),
    ({"min_threshold": 1}, "min_threshold must be a whole number >= 2"),
    ({"allow_split_learning": "yes"}, "allow_split_learning must be true or false"),
])
def test_a_bad_policy_is_one_clear_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        SitePolicy.from_dict(raw)


@pytest.mark.parametrize("policy, raw, message", [
    ({"max_epsilon": 5.0}, PLAIN, "trains only with DP-SGD"),
    ({"require_secure_aggregation": True}, PLAIN, "requires secure aggregation"),
    ({"min_threshold": 3}, {**PLAIN, "privacy": {"secure_aggregation": True}},
     "threshold 2 is below this site's min_threshold 3"),
])
def test_a_plan_the_site_did_not_agree_to_is_refused_at_the_site(policy, raw, message):
    with pytest.raises(PlanRefused, match=message):
        worker(raw, policy)


def test_a_site_takes_part_in_split_learning_only_by_opt_in(tmp_path):
    """Split learning sends every training image's activations at the cut: refused (one line,
    naming the key to set) before the site builds anything, unless its policy opts in."""
    with pytest.raises(PlanRefused) as refused:
        worker(SPLIT, state=tmp_path)
    line = str(refused.value)
    assert "\n" not in line and "set allow_split_learning = true in [policy]" in line
    assert not any(tmp_path.iterdir())  # nothing trained, nothing recorded
    opted_in = worker(SPLIT, {"allow_split_learning": True})
    assert opted_in.config.federation.algorithm == "split"
    assert worker(PLAIN).config.federation.algorithm == "fedavg"  # other plans: the key is moot


def test_without_dp_a_site_shares_its_summaries_and_under_dp_nothing_unaccounted():
    plain = worker(PLAIN)
    assert {"n_train", "label_counts"} <= plain.info.keys()
    meta, _ = plain.run("train", {"epochs": 1}, blob())
    assert "train_loss" in meta["metrics"]
    private = worker(DP)
    assert private.info == {"site": "site-a"}  # sizes and label counts are not covered by epsilon
    meta, _ = private.run("train", {"epochs": 1}, blob(DP))
    assert "train_loss" not in meta["metrics"] and meta["metrics"]["epsilon"] > 0
    assert private.run("evaluate", {"split": "val"}, blob(DP))[0]["metrics"] == {}
    final, _ = private.run("final", {}, blob(DP))
    assert set(final) == {"withheld"} and private.last_final is not None  # kept at the site
    opted_in = worker(DP, {"share_training_loss": True, "share_evaluation": True})
    assert "train_loss" in opted_in.run("train", {"epochs": 1}, blob(DP))[0]["metrics"]
    assert "test" in opted_in.run("final", {}, blob(DP))[0]


def test_a_global_model_that_does_not_fit_the_sites_plan_is_refused_before_any_training(tmp_path):
    private = worker(DP, state=tmp_path)  # under DP-SGD the plan's model is not the plain one
    with pytest.raises(IncompatibleUpdate, match="does not fit the one this site builds"):
        private.run("train", {"epochs": 1}, blob(PLAIN))
    assert not (tmp_path / NAME).exists()  # nothing trained, nothing spent


def test_the_ledger_is_written_before_the_update_leaves_and_a_restarted_site_continues(tmp_path):
    first = worker(DP, state=tmp_path)
    meta, _ = first.run("train", {"epochs": 1}, blob(DP))
    ledger = tmp_path / NAME
    assert ledger.exists() and stat.S_IMODE(ledger.stat().st_mode) == 0o600
    recorded = json.loads(ledger.read_text())
    assert recorded["epsilon"] == pytest.approx(meta["metrics"]["epsilon"])
    restarted = worker(DP, state=tmp_path)  # a new process: its accountant starts from the ledger
    again, _ = restarted.run("train", {"epochs": 1}, blob(DP))
    assert again["metrics"]["epsilon"] > meta["metrics"]["epsilon"] * 1.2
    assert len(PrivacyLedger(tmp_path).history()) >= 1


def test_a_restarted_site_refuses_to_train_past_its_own_budget(tmp_path):
    first = worker(DP, state=tmp_path)
    spent = first.run("train", {"epochs": 1}, blob(DP))[0]["metrics"]["epsilon"]
    capped = worker(DP, {"max_epsilon": spent * 1.1}, state=tmp_path)  # one more round: > 1.2x
    with pytest.raises(PrivacyBudgetExhausted, match="privacy budget is spent"):
        capped.run("train", {"epochs": 1}, blob(DP))


def test_an_unreadable_ledger_stops_the_site(tmp_path):
    (tmp_path / NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="will not train without knowing what it has spent"):
        worker(DP, state=tmp_path)
