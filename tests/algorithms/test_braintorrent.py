"""BrainTorrent (p2p, a site a step pulls its peers' newer models), driven by the real round loop
over test_gossip's one-step transport.

Hand mutations these tests catch: pull every peer whatever its version (the last site of a round
would merge again what it has seen: test_a_site_pulls_only_newer_models); merge with uniform
instead of sample weights (test_each_step_merges_what_came_before); draw the order from an
unseeded generator (test_the_order_is_seeded_and_a_resumed_run_continues_alike).
"""

from __future__ import annotations

import numpy as np
import torch

from medfed.algorithms.braintorrent import BrainTorrent
from medfed.algorithms.graphs import build_graph
from medfed.algorithms.topology_spec import parse_gossip
from medfed.client.trainer import TrainOptions
from medfed.server.round_loop import RoundPlan, run_rounds
from tests.algorithms.test_gossip import (
    MODEL_BYTES,
    SAMPLES,
    SITES,
    TARGETS,
    StepTransport,
    assert_close,
    initial,
    run,
)


def braintorrent(seed: int = 7) -> BrainTorrent:
    graph = build_graph(parse_gossip("braintorrent"), SITES, seed)
    return BrainTorrent(initial(), graph, MODEL_BYTES, seed)


class Recording(StepTransport):
    """Keeps the model each site was sent to train from, in the order they trained."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, dict]] = []

    def train(self, site, state, options):
        self.sent.append((site, state))
        return super().train(site, state, options)


def test_each_step_merges_what_came_before():
    """Round 1: the k-th site of the order has never trained; it pulls the k-1 sites before it
    (each newer than nothing) and trains from their sample-weighted mean."""
    transport = Recording()
    history = run(braintorrent(), rounds=1, transport=transport)
    order = [site for site, _ in transport.sent]
    assert sorted(order) == sorted(SITES)
    trained = {}
    for k, (site, sent) in enumerate(transport.sent):
        before = order[:k]
        if not before:
            assert_close(sent, initial())
        else:
            total = sum(SAMPLES[s] for s in before)
            expected = sum(SAMPLES[s] * trained[s]["w"] for s in before) / total
            torch.testing.assert_close(sent["w"], expected)
        trained[site] = {"w": 0.5 * sent["w"] + 0.5 * TARGETS[site]}  # StepTransport's step
    n = len(SITES)
    assert history[0].bytes_peers == n * (n - 1) // 2 * MODEL_BYTES


def test_a_site_pulls_only_newer_models():
    """After a round the last site of its order has merged every peer's current model: asked
    again, nothing is newer and it keeps its own; the first site pulls all four."""
    transport = Recording()
    bt = braintorrent()
    run(bt, rounds=1, transport=transport)
    first, last = transport.sent[0][0], transport.sent[-1][0]
    bt.open_stage()
    assert_close(bt.payload(last), bt.site_state(last))
    merged = bt.payload(first)
    pairs = [(bt.site_state(s), SAMPLES[s]) for s in SITES]
    expected = sum(n * s["w"] for s, n in pairs) / sum(n for _, n in pairs)
    torch.testing.assert_close(merged["w"], expected)


def test_the_order_is_seeded_and_a_resumed_run_continues_alike():
    orders = []
    for _ in range(2):
        transport = Recording()
        run(braintorrent(seed=3), rounds=2, transport=transport)
        orders.append([s for s, _ in transport.sent])
    assert orders[0] == orders[1]
    whole = braintorrent()
    run(whole, rounds=3)
    half = braintorrent()
    run(half, rounds=1)
    resumed = braintorrent()
    resumed.restore(half.checkpoint())
    run_rounds(resumed, StepTransport(), SITES, RoundPlan(3, eval_every=0, start=1), TrainOptions(),
               np.random.default_rng(0))
    for site in SITES:
        assert_close(resumed.site_state(site), whole.site_state(site))
    assert_close(resumed.global_state, whole.global_state)


def test_fixed_models_reach_consensus():
    """With no training (fixed models then lr 0) every merge pulls newer peers: the gap closes."""
    apart = {s: {"w": torch.full((3,), float(k)), "b": torch.full((1,), -float(k)),
                 "steps": torch.tensor(1)} for k, s in enumerate(SITES)}
    history = run(braintorrent(), rounds=6, transport=StepTransport(lr=0.0, fixed=apart))
    gaps = [r.consensus_gap for r in history]
    assert gaps[-1] < 0.1 * gaps[0]
