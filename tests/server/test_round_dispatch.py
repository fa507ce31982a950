"""The loop's two hooks for deployment: a transport's dispatch() gets each stage's payloads before
the loop collects them, and RoundPlan.start resumes at a later round."""

from __future__ import annotations

import numpy as np

from medfed.algorithms.fedavg import FedAvg
from medfed.algorithms.sequential import SequentialTransfer
from medfed.client.trainer import TrainOptions
from medfed.server.round_loop import RoundPlan, run_rounds
from tests.server.test_round_loop import SITES, FakeTransport, good, reference


class DispatchingTransport(FakeTransport):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, object]] = []

    def dispatch(self, payloads, options):
        self.calls.append(("dispatch", sorted(payloads)))
        self.payloads = payloads

    def train(self, site, state, options):
        assert state is self.payloads[site]  # the loop collects exactly what it dispatched
        self.calls.append(("train", site))
        return super().train(site, state, options)


def test_dispatch_comes_once_per_stage_before_the_stage_is_collected():
    transport = DispatchingTransport({s: good(1.0) for s in SITES})
    run_rounds(FedAvg(reference()), transport, SITES, RoundPlan(rounds=1, eval_every=0),
               TrainOptions(), np.random.default_rng(0))
    assert transport.calls == [("dispatch", SITES)] + [("train", s) for s in SITES]


def test_sequential_stages_are_dispatched_one_site_at_a_time():
    transport = DispatchingTransport({s: good(1.0) for s in SITES})
    strategy = SequentialTransfer(reference(), SITES, rounds=1, cyclic=True)
    run_rounds(strategy, transport, SITES, RoundPlan(rounds=1, eval_every=0), TrainOptions(),
               np.random.default_rng(0))
    assert [c for c in transport.calls if c[0] == "dispatch"] == [("dispatch", [s]) for s in SITES]


def test_a_plan_that_starts_later_runs_only_the_remaining_rounds():
    transport = FakeTransport({s: good(2.0) for s in SITES})
    started: list[int] = []

    class Observer:
        def round_started(self, r, sites):
            started.append(r)

        def site_finished(self, r, site, loss):
            pass

        def round_finished(self, result):
            pass

    history = run_rounds(FedAvg(reference()), transport, SITES, RoundPlan(rounds=5, start=3),
                         TrainOptions(), np.random.default_rng(0), Observer())
    assert started == [3, 4] and [h.round for h in history] == [3, 4]
    assert all(h.sites == SITES for h in history)
