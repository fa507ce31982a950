"""The round loop with a fake transport: failures are data, bad updates never reach aggregation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions
from medfed.errors import NotEnoughSites, TransportError
from medfed.server.early_stop import SiteEarlyStop
from medfed.server.round_loop import RoundPlan, RoundResult, run_rounds
from medfed.server.sampling import sample_sites
from medfed.types import StateDict, Update

SITES = ["site-a", "site-b", "site-c"]


def reference() -> StateDict:
    return {"w": torch.zeros(2, 2), "bn.num_batches_tracked": torch.tensor(0)}


def good_state(value: float) -> StateDict:
    return {"w": torch.full((2, 2), value), "bn.num_batches_tracked": torch.tensor(1)}


Behaviour = Callable[[str, StateDict], Update]


def good(value: float, n: int = 10) -> Behaviour:
    return lambda site, state: Update(site, good_state(value), n, 1, {"train_loss": value})


class FakeTransport:
    """Each site answers with its behaviour; every call is recorded; bytes are counted per call."""

    def __init__(self, behaviours: dict[str, Behaviour], unreachable: frozenset[str] = frozenset()):
        self.behaviours = behaviours
        self.unreachable = unreachable
        self.trained: list[tuple[str, TrainOptions]] = []
        self.evaluated: list[tuple[str, str]] = []
        self.bytes_up = 0
        self.bytes_down = 0

    def train(self, site, state, options):
        self.trained.append((site, options))
        self.bytes_down += 100
        update = self.behaviours[site](site, state)
        self.bytes_up += 10
        return update

    def evaluate(self, site, state, split):
        if site in self.unreachable:
            raise TransportError(f"{site} is unreachable")
        self.evaluated.append((site, split))
        self.bytes_up += 1
        return {"auc": 0.5, "n": 4.0}


def raise_transport_error(site, state):
    raise TransportError(f"connection to {site} reset")


def run(transport, rounds=1, min_sites=1, fraction=1.0, eval_every=1, seed=0, strategy=None,
        observer=None):
    strategy = strategy or FedAvg(reference())
    plan = RoundPlan(rounds, fraction, min_sites, eval_every)
    history = run_rounds(strategy, transport, SITES, plan, TrainOptions(),
                         np.random.default_rng(seed), observer)
    return strategy, history


def test_all_sites_deliver_and_the_model_is_their_weighted_mean():
    transport = FakeTransport({"site-a": good(1.0, 10), "site-b": good(2.0, 30),
                               "site-c": good(4.0, 60)})
    strategy, (result,) = run(transport)
    assert result.round == 0 and result.sites == SITES and result.failed == {}
    assert result.train_loss == {"site-a": 1.0, "site-b": 2.0, "site-c": 4.0}
    expected = (1 * 10 + 2 * 30 + 4 * 60) / 100
    torch.testing.assert_close(strategy.global_state["w"], torch.full((2, 2), expected))


def test_a_site_raising_transport_error_is_recorded_and_the_round_closes_with_the_others():
    transport = FakeTransport({"site-a": good(1.0), "site-b": raise_transport_error,
                               "site-c": good(3.0)})
    strategy, (result,) = run(transport)
    assert result.sites == ["site-a", "site-c"]
    assert list(result.failed) == ["site-b"]
    assert "connection to site-b reset" in result.failed["site-b"]
    torch.testing.assert_close(strategy.global_state["w"], torch.full((2, 2), 2.0))


def bad(make: Callable[[], StateDict], n: int = 10, site: str | None = None) -> Behaviour:
    return lambda s, state: Update(site or s, make(), n, 1, {})


def with_(key, value):
    def make():
        state = good_state(100.0)
        state[key] = value
        return state
    return make


def without(key):
    def make():
        state = good_state(100.0)
        del state[key]
        return state
    return make


BAD_UPDATES = {
    "nan": (bad(with_("w", torch.tensor([[1.0, float("nan")], [0.0, 0.0]]))), "NaN"),
    "inf": (bad(with_("w", torch.tensor([[1.0, float("inf")], [0.0, 0.0]]))), "NaN or Inf"),
    "shape": (bad(with_("w", torch.zeros(2, 3))), "shape (2, 3), expected (2, 2)"),
    "dtype": (bad(with_("w", torch.zeros(2, 2, dtype=torch.float64))), "dtype torch.float64"),
    "counter dtype": (bad(with_("bn.num_batches_tracked", torch.tensor(1.0))), "dtype"),
    "missing key": (bad(without("w")), "missing ['w']"),
    "extra key": (bad(with_("extra", torch.zeros(1))), "unexpected ['extra']"),
    "zero samples": (bad(lambda: good_state(100.0), n=0), "sample count"),
    "negative samples": (bad(lambda: good_state(100.0), n=-5), "sample count"),
    "wrong origin": (bad(lambda: good_state(100.0), site="site-z"), "arrived on the channel"),
}


@pytest.mark.parametrize("kind", list(BAD_UPDATES))
def test_a_bad_update_is_rejected_recorded_and_never_aggregated(kind):
    behaviour, message = BAD_UPDATES[kind]
    transport = FakeTransport({"site-a": good(1.0), "site-b": behaviour, "site-c": good(3.0)})
    strategy, (result,) = run(transport)
    assert result.sites == ["site-a", "site-c"]
    assert list(result.failed) == ["site-b"]
    assert message in result.failed["site-b"]
    torch.testing.assert_close(strategy.global_state["w"], torch.full((2, 2), 2.0))
    assert strategy.global_state["w"].dtype == torch.float32


def test_not_enough_sites_when_fewer_than_min_sites_are_usable():
    transport = FakeTransport({"site-a": good(1.0), "site-b": raise_transport_error,
                               "site-c": good(3.0)})
    with pytest.raises(NotEnoughSites) as info:
        run(transport, min_sites=3)
    assert "2 usable updates" in str(info.value) and "site-b" in str(info.value)


def test_min_sites_met_by_the_usable_updates_is_enough():
    transport = FakeTransport({"site-a": good(1.0), "site-b": raise_transport_error,
                               "site-c": good(3.0)})
    _, history = run(transport, rounds=2, min_sites=2)
    assert [r.sites for r in history] == [["site-a", "site-c"]] * 2


def test_no_usable_update_at_all_is_not_enough_even_for_min_sites_one():
    transport = FakeTransport({s: raise_transport_error for s in SITES})
    with pytest.raises(NotEnoughSites):
        run(transport, min_sites=1)


def test_each_round_sends_the_current_global_model():
    seen = []

    def recording(site, state):
        seen.append(state["w"][0, 0].item())
        return Update(site, good_state(state["w"][0, 0].item() + 1), 1, 1, {})

    transport = FakeTransport({s: recording for s in SITES})
    strategy, history = run(transport, rounds=3)
    assert seen == [0.0] * 3 + [1.0] * 3 + [2.0] * 3
    assert strategy.global_state["w"][0, 0].item() == 3.0 and len(history) == 3


def test_fraction_sampling_is_seeded_and_keeps_the_site_order():
    def sampled(seed):
        transport = FakeTransport({s: good(1.0) for s in SITES})
        _, history = run(transport, rounds=12, fraction=0.5, seed=seed)
        assert [site for site, _ in transport.trained] == [s for r in history for s in r.sites]
        return [tuple(r.sites) for r in history]

    a, b, c = sampled(0), sampled(0), sampled(1)
    assert a == b and a != c
    assert all(len(s) == 2 for s in a)  # ceil(0.5 * 3)
    assert all(list(s) == sorted(s) for s in a)
    assert len(set(a)) > 1


def test_sample_sites():
    rng = np.random.default_rng(0)
    assert sample_sites(SITES, 1.0, rng) == SITES
    assert len(sample_sites(SITES, 0.01, rng)) == 1
    many = [f"s{k:02d}" for k in range(10)]
    picked = sample_sites(many, 0.35, rng)
    assert len(picked) == 4 and picked == sorted(picked) and len(set(picked)) == 4


def test_evaluation_every_n_rounds_and_after_the_last():
    transport = FakeTransport({s: good(1.0) for s in SITES})
    _, history = run(transport, rounds=5, eval_every=2)
    assert [bool(r.val) for r in history] == [False, True, False, True, True]
    assert set(history[1].val) == set(SITES) and history[1].val["site-a"]["auc"] == 0.5
    assert all(split == "val" for _, split in transport.evaluated)


def test_eval_every_zero_never_evaluates():
    transport = FakeTransport({s: good(1.0) for s in SITES})
    _, history = run(transport, rounds=2, eval_every=0)
    assert all(r.val == {} for r in history) and transport.evaluated == []


def test_bytes_are_counted_per_round():
    transport = FakeTransport({s: good(1.0) for s in SITES})
    _, history = run(transport, rounds=2)
    for r in history:
        assert r.bytes_down == 3 * 100
        assert r.bytes_up == 3 * 10 + 3 * 1
    assert sum(r.bytes_up for r in history) == transport.bytes_up


def test_the_strategys_training_options_reach_the_sites():
    transport = FakeTransport({s: good(1.0) for s in SITES})
    run(transport, strategy=FedAvg(reference(), name="fedprox", proximal_mu=0.3))
    assert {options.proximal_mu for _, options in transport.trained} == {0.3}


def test_the_observer_hears_every_site_and_failures_as_none():
    events = []

    class Observer:
        def round_started(self, r, sites):
            events.append(("start", r, tuple(sites)))

        def site_finished(self, r, site, loss):
            events.append(("site", site, loss))

        def round_finished(self, result):
            events.append(("end", result.round, isinstance(result, RoundResult)))

    transport = FakeTransport({"site-a": good(1.0), "site-b": raise_transport_error,
                               "site-c": good(3.0)})
    run(transport, observer=Observer())
    assert events == [("start", 0, tuple(SITES)), ("site", "site-a", 1.0), ("site", "site-b", None),
                      ("site", "site-c", 3.0), ("end", 0, True)]


def test_an_unreachable_site_does_not_stop_the_run():
    transport = FakeTransport({"site-a": good(1.0), "site-b": raise_transport_error,
                               "site-c": good(3.0)}, unreachable=frozenset({"site-b"}))
    _, history = run(transport, rounds=2)
    assert len(history) == 2
    assert all("site-b" in r.failed for r in history)
    assert set(history[-1].val) >= {"site-a", "site-c"}


def test_min_sites_counts_the_sites_a_sequential_strategy_scheduled():
    from medfed.algorithms.sequential import SequentialTransfer

    transport = FakeTransport({s: good(1.0) for s in SITES})
    strategy = SequentialTransfer(reference(), SITES, 3, cyclic=False)
    _, history = run(transport, rounds=3, min_sites=2, strategy=strategy)
    assert [r.sites for r in history] == [["site-a"], ["site-b"], ["site-c"]]


def test_sampling_asks_at_least_min_sites_so_a_round_can_reach_it():
    transport = FakeTransport({s: good(1.0) for s in SITES})
    _, (result,) = run(transport, fraction=0.1, min_sites=2)
    assert len(result.sites) == 2


def test_a_site_that_cannot_score_is_an_evaluation_failure_not_an_update_failure():
    transport = FakeTransport({s: good(1.0) for s in SITES}, unreachable=frozenset({"site-b"}))
    _, (result,) = run(transport)
    assert "site-b" in result.sites and "site-b" not in result.failed
    assert "site-b" in result.eval_failed and "site-b" not in result.val


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [1e-3] * 4),
    ("cosine", [1e-3, 1e-3 * (1 + 2 ** -0.5) / 2, 5e-4, 1e-3 * (1 - 2 ** -0.5) / 2]),
])
def test_each_round_trains_at_the_schedules_learning_rate(schedule, expected):
    transport = FakeTransport({s: good(1.0) for s in SITES})
    plan = RoundPlan(4, lr_schedule=schedule)
    run_rounds(FedAvg(reference()), transport, SITES, plan, TrainOptions(lr=1e-3),
               np.random.default_rng(0))
    lrs = [options.lr for site, options in transport.trained if site == "site-a"]
    assert lrs == pytest.approx(expected)


class RisingAt(FakeTransport):
    """site-c's validation AUC rises every time it scores; the other sites' stays at 0.5."""

    def evaluate(self, site, state, split):
        super().evaluate(site, state, split)
        return {"auc": 0.5 + 0.01 * sum(s == site for s, _ in self.evaluated)} if site == "site-c" \
            else {"auc": 0.5}


def test_a_site_that_has_stopped_on_its_own_score_neither_trains_nor_scores_again():
    """With patience 1 from round 2, sites a and b (flat scores) stop after round 2 while site-c,
    still improving, trains on to the planned 4 rounds alone."""
    transport = RisingAt({s: good(1.0) for s in SITES})
    stop = SiteEarlyStop(SITES, patience=1, min_rounds=2)
    history = run_rounds(FedAvg(reference()), transport, SITES, RoundPlan(4, 1.0, 1, 1),
                         TrainOptions(), np.random.default_rng(0), stop=stop)
    assert len(history) == 4 and stop.rounds_run() == {"site-a": 2, "site-b": 2, "site-c": 4}
    assert [site for site, _ in transport.trained] == SITES * 2 + ["site-c"] * 2
    assert [site for site, _ in transport.evaluated] == SITES * 2 + ["site-c"] * 2
