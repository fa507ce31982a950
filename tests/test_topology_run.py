"""Topologies end to end: `medfed run --topology p2p|hybrid` on tiny synthetic sites, and every bad
topology value refused with one line and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from medfed.config import DataConfig, FederationConfig, RunConfig, TrainingConfig
from medfed.experiment import prepare, train
from tests.test_cli import assert_one_line_error, run_cli

SITES = "site-a, site-b, site-c"


def tiny(**federation) -> RunConfig:
    return RunConfig(device="cpu", baselines=False,
                     data=DataConfig(sites=3, synthetic_samples=90, synthetic_test=30, augment=False),
                     federation=FederationConfig(rounds=2, eval_every=0, **federation),
                     training=TrainingConfig(batch_size=64))  # one local step per site and round


@pytest.mark.parametrize("federation", [{"topology": "p2p", "gossip": "full"},
                                        {"topology": "hybrid", "regions": "north:site-a,site-b;"
                                                                          "south:site-c"}])
def test_full_gossip_and_hybrid_train_as_fedavg_does(federation):
    """Same seed, one local step: the same models as FedAvg's, within float tolerance."""
    fedavg_setup, setup = prepare(tiny()), prepare(tiny(**federation))
    fedavg = train(fedavg_setup, "fedavg", fedavg_setup.federation.sites, "fedavg")
    other = train(setup, "fedavg", setup.federation.sites, "other")
    for key, value in fedavg.strategy.global_state.items():
        torch.testing.assert_close(other.strategy.global_state[key], value, rtol=1e-5, atol=1e-6)
    assert other.test["auc"] == pytest.approx(fedavg.test["auc"], abs=1e-6)


def test_p2p_run_records_consensus_gap_and_site_models(tmp_path, tiny_config, capsys):
    out = tmp_path / "p2p"
    code, _, err = run_cli(["run", *tiny_config(2), "--sites", "4", "--topology", "p2p",
                            "--no-baselines", "--out", str(out)], capsys)  # 3 in a ring: full
    assert code == 0, err
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all(r["consensus_gap"] > 0 and r["bytes_peers"] > 0 for r in rounds)
    topology = json.loads((out / "summary.json").read_text())["topology"]
    assert topology["kind"] == "p2p" and topology["graph"]["site-a"] == ["site-b", "site-d"]
    assert set(topology["site_models"]) == {"site-a", "site-b", "site-c", "site-d"}
    assert topology["bytes_peers"] == sum(r["bytes_peers"] for r in rounds)


@pytest.mark.parametrize("args,fragment", [
    (["--topology", "mesh"], "unknown topology 'mesh'"),
    (["--topology", "p2p", "--gossip", "star"], "gossip must be one of"),
    (["--topology", "p2p", "--gossip", "k-regular:3"], "a 3-regular graph on 5 sites does not exist"),
    (["--topology", "p2p", "--gossip", "k-regular:x"], "K a whole number"),
    (["--gossip", "full"], "gossip applies to topology p2p"),
    (["--regions", "north:site-a"], "regions applies to topology hybrid"),
    (["--topology", "hybrid"], "topology hybrid needs regions"),
    (["--topology", "hybrid", "--regions", "north"], "has no region name or no sites"),
    (["--topology", "hybrid", "--regions", "n:site-a;s:site-a"], "is in two regions"),
    (["--topology", "hybrid", "--regions", "n:site-a", "--global-every", "0"],
     "global_every must be >= 1"),
    (["--topology", "p2p", "--algorithm", "scaffold"], "runs fedavg or fedprox, not scaffold"),
    (["--topology", "p2p", "--aggregator", "median"], "needs topology = \"server\""),
    (["--topology", "p2p", "--secure-aggregation"], "no central aggregator"),
    (["--topology", "p2p", "--compress", "q8"], "compressed gossip"),
])
def test_a_bad_topology_setting_is_one_line(capsys, tmp_path, args, fragment):
    code, _, err = run_cli(["run", *args, "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_regions_that_miss_a_site_are_one_line(capsys, tmp_path, tiny_config):
    code, _, err = run_cli(["run", *tiny_config(1), "--topology", "hybrid", "--regions",
                            "north:site-a,site-b;south:site-x", "--no-baselines",
                            "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "regions names unknown sites ['site-x']", SITES)
    assert not (tmp_path / "out").exists()


def test_braintorrent_run_records_pulls_and_site_models(tmp_path, tiny_config, capsys):
    out = tmp_path / "bt"
    code, _, err = run_cli(["run", *tiny_config(2), "--topology", "p2p", "--gossip", "braintorrent",
                            "--no-baselines", "--out", str(out)], capsys)
    assert code == 0, err
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all(r["consensus_gap"] >= 0 and r["bytes_peers"] > 0 for r in rounds)
    topology = json.loads((out / "summary.json").read_text())["topology"]
    assert topology["kind"] == "p2p" and set(topology["site_models"]) == {"site-a", "site-b",
                                                                          "site-c"}
