"""Gossip (p2p) and hierarchical (hybrid) strategies, driven by the real round loop over a fake
transport whose "training" is one deterministic step: x <- x - lr * (x - target_site), i.e. one
gradient step on the site's quadratic loss.

Hand mutations that these tests catch: mix with uniform instead of sample weights (full graph !=
FedAvg); let a site mix with non-neighbours (ring's first-round models equal); mix sequentially,
each site reading already-mixed neighbours (full graph != FedAvg); weight regions equally instead
of by samples (two regions != FedAvg); drop the forced global round at the end (last model stale).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from medfed.algorithms.fedavg import FedAvg
from medfed.algorithms.gossip import Gossip
from medfed.algorithms.graphs import build_graph
from medfed.algorithms.hierarchical import Hierarchical
from medfed.algorithms.topology_spec import GossipSpec
from medfed.client.trainer import TrainOptions
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.types import StateDict, Update

SITES = ["site-a", "site-b", "site-c", "site-d", "site-e"]
SAMPLES = {"site-a": 10, "site-b": 40, "site-c": 25, "site-d": 70, "site-e": 5}
TARGETS = {site: torch.full((3,), float(k * k)) for k, site in enumerate(SITES)}
MODEL_BYTES = 1000


def initial() -> StateDict:
    return {"w": torch.zeros(3), "b": torch.ones(1), "steps": torch.tensor(0)}


class StepTransport:
    """Each site takes one gradient step towards its target (lr 0 or a fixed model: no training)."""

    def __init__(self, lr: float = 0.5, fixed: dict[str, StateDict] | None = None) -> None:
        self.lr, self.fixed = lr, fixed or {}
        self.bytes_up = self.bytes_down = 0

    def train(self, site, state, options):
        if site in self.fixed:
            new = self.fixed.pop(site)
        else:
            new = {"w": state["w"] - self.lr * (state["w"] - TARGETS[site]),
                   "b": state["b"] * (1 - self.lr), "steps": state["steps"] + 1}
        return Update(site, new, SAMPLES[site], 1, {"train_loss": 0.0})

    def evaluate(self, site, state, split):
        return {"auc": 0.5}


def run(strategy, rounds=4, transport=None):
    plan = RoundPlan(rounds, eval_every=0)
    return run_rounds(strategy, transport or StepTransport(), SITES, plan, TrainOptions(),
                      np.random.default_rng(0))


def gossip(kind: str, degree: int | None = None) -> Gossip:
    return Gossip(initial(), build_graph(GossipSpec(kind, degree), SITES, seed=3), MODEL_BYTES)


def assert_close(a: StateDict, b: StateDict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)


def test_gossip_on_the_full_graph_with_one_local_step_is_fedavg():
    fedavg, full = FedAvg(initial()), gossip("full")
    run(fedavg)
    history = run(full)
    for site in SITES:
        assert_close(full.site_state(site), fedavg.global_state)
    assert_close(full.global_state, fedavg.global_state)
    assert all(r.consensus_gap == pytest.approx(0.0, abs=1e-6) for r in history)


def test_ring_sites_mix_only_with_their_two_neighbours():
    ring = gossip("ring")
    run(ring, rounds=1)
    stepped = {s: 0.5 * TARGETS[s] for s in SITES}  # one step from zero
    neighbourhood = ["site-e", "site-a", "site-b"]  # site-a's: itself and its ring neighbours
    expected = sum(SAMPLES[s] * stepped[s] for s in neighbourhood) / sum(SAMPLES[s]
                                                                         for s in neighbourhood)
    torch.testing.assert_close(ring.site_state("site-a")["w"], expected)


def test_ring_consensus_gap_shrinks_when_no_site_trains():
    apart = {s: {"w": torch.full((3,), float(k)), "b": torch.full((1,), -float(k)),
                 "steps": torch.tensor(1)} for k, s in enumerate(SITES)}
    ring = gossip("ring")
    history = run(ring, rounds=12, transport=StepTransport(lr=0.0, fixed=apart))
    gaps = [r.consensus_gap for r in history]
    assert gaps[0] > 0.5
    assert all(later < earlier for earlier, later in pairwise(gaps))
    assert gaps[-1] < 0.05 * gaps[0]


def test_gossip_counts_a_model_per_neighbour_and_site():
    history = run(gossip("ring"), rounds=2)
    assert [r.bytes_peers for r in history] == [len(SITES) * 2 * MODEL_BYTES] * 2
    history = run(gossip("full"), rounds=1)
    assert history[0].bytes_peers == len(SITES) * (len(SITES) - 1) * MODEL_BYTES


def test_gossip_checkpoint_restores_every_sites_model():
    ring = gossip("ring")
    run(ring, rounds=2)
    again = gossip("ring")
    again.restore(ring.checkpoint())
    for site in SITES:
        assert_close(again.site_state(site), ring.site_state(site))
    assert_close(again.global_state, ring.global_state)


@pytest.mark.parametrize("regions", [
    {s: "all" for s in SITES},
    {"site-a": "north", "site-b": "north", "site-c": "north", "site-d": "south", "site-e": "south"},
])
def test_hybrid_with_a_global_average_every_round_is_fedavg(regions):
    fedavg = FedAvg(initial())
    hybrid = Hierarchical(initial(), regions, rounds=4, model_bytes=MODEL_BYTES)
    run(fedavg)
    history = run(hybrid)
    assert_close(hybrid.global_state, fedavg.global_state)
    n_regions = len(set(regions.values()))
    assert all(r.bytes_regions == 2 * n_regions * MODEL_BYTES for r in history)


def test_hybrid_regions_drift_apart_between_global_rounds_and_meet_at_the_last():
    regions = {"site-a": "north", "site-b": "north", "site-c": "south", "site-d": "south",
               "site-e": "south"}
    hybrid = Hierarchical(initial(), regions, rounds=3, model_bytes=MODEL_BYTES, global_every=2)
    run(hybrid, rounds=1)
    assert not torch.equal(hybrid.site_state("site-a")["w"], hybrid.site_state("site-c")["w"])
    assert hybrid.round_stats().bytes_regions == 0  # no global round yet
    run_rest = run_rounds(hybrid, StepTransport(), SITES, RoundPlan(3, start=1, eval_every=0),
                          TrainOptions(), np.random.default_rng(0))
    assert [r.bytes_regions > 0 for r in run_rest] == [True, True]  # round 2, and the last
    assert hybrid.site_state("site-a") is hybrid.global_state


def test_hybrid_checkpoint_round_trips_between_global_rounds():
    regions = {"site-a": "north", "site-b": "north", "site-c": "south", "site-d": "south",
               "site-e": "south"}
    hybrid = Hierarchical(initial(), regions, rounds=4, model_bytes=MODEL_BYTES, global_every=2)
    run(hybrid, rounds=1)
    again = Hierarchical(initial(), regions, rounds=4, model_bytes=MODEL_BYTES, global_every=2)
    again.restore(hybrid.checkpoint())
    for site in SITES:
        assert_close(again.site_state(site), hybrid.site_state(site))
