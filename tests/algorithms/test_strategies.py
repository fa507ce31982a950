"""Strategies: what each algorithm's server does with the updates of a stage."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medfed import config
from medfed.algorithms.ensemble import LocalEnsemble
from medfed.algorithms.fedavg import FedAvg
from medfed.algorithms.fedbn import FedBN
from medfed.algorithms.registry import ALGORITHMS, StrategyContext, build_strategy
from medfed.algorithms.sequential import SequentialTransfer
from medfed.algorithms.server_optimizer import AdaptiveServerOptimizer
from medfed.config import DataConfig, FederationConfig, RunConfig
from medfed.errors import ConfigError
from medfed.types import Prediction, Update

NORM = frozenset({"bn.weight", "bn.running_mean", "bn.num_batches_tracked"})
PARAMS = frozenset({"conv.weight", "bn.weight"})
SITES = ["site-a", "site-b", "site-c"]


def state(conv: float, bn: float, tracked: int = 0) -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.full((2, 2), conv), "bn.weight": torch.full((2,), bn),
            "bn.running_mean": torch.full((2,), bn),
            "bn.num_batches_tracked": torch.tensor(tracked)}


def update(site: str, s: dict[str, torch.Tensor], n: int) -> Update:
    return Update(site=site, state=s, n_samples=n, n_steps=1)


def one_stage(strategy, updates: list[Update]) -> None:
    strategy.open_stage()
    for u in updates:
        strategy.receive(u)
    strategy.close_stage()


def context(**federation) -> StrategyContext:
    return StrategyContext(state(0.0, 1.0), PARAMS, NORM, SITES, FederationConfig(**federation))


# --- FedAvg ------------------------------------------------------------------------------------

def test_fedavg_close_stage_gives_the_sample_weighted_mean():
    strategy = FedAvg(state(0.0, 0.0))
    one_stage(strategy, [update("site-a", state(1.0, 10.0, 5), 10),
                         update("site-b", state(4.0, 40.0, 7), 30)])
    g = strategy.global_state
    torch.testing.assert_close(g["conv.weight"], torch.full((2, 2), (1 * 10 + 4 * 30) / 40))
    torch.testing.assert_close(g["bn.running_mean"], torch.full((2,), (10 * 10 + 40 * 30) / 40))
    assert g["conv.weight"].dtype == torch.float32
    counter = g["bn.num_batches_tracked"]
    assert counter.dtype == torch.int64 and counter.item() == 7
    assert strategy.payload("site-c") is g and strategy.site_state("site-a") is g


def test_fedavg_stage_with_no_updates_keeps_the_model():
    initial = state(2.0, 3.0)
    strategy = FedAvg(initial)
    one_stage(strategy, [])
    assert strategy.global_state is initial


def test_fedavg_each_stage_starts_a_fresh_mean():
    strategy = FedAvg(state(0.0, 0.0))
    one_stage(strategy, [update("site-a", state(1.0, 1.0), 1)])
    one_stage(strategy, [update("site-b", state(3.0, 3.0), 1)])
    assert strategy.global_state["conv.weight"].unique().item() == 3.0


def test_fedavg_keys_an_update_leaves_out_keep_their_global_value():
    strategy = FedAvg(state(0.0, 9.0))
    partial = {"conv.weight": torch.full((2, 2), 5.0)}
    one_stage(strategy, [update("site-a", partial, 1)])
    assert strategy.global_state["conv.weight"].unique().item() == 5.0
    assert strategy.global_state["bn.running_mean"].unique().item() == 9.0


def test_fedprox_asks_sites_for_the_proximal_term_and_fedavg_does_not():
    assert build_strategy("fedprox", context(mu=0.25)).train_overrides == {"proximal_mu": 0.25}
    assert build_strategy("fedavg", context(mu=0.25)).train_overrides == {}


# --- FedBN -------------------------------------------------------------------------------------

def test_fedbn_keeps_each_sites_norm_keys_and_averages_the_rest():
    initial = state(0.0, 1.0)
    strategy = FedBN(FedAvg(initial), NORM)
    one_stage(strategy, [update("site-a", state(1.0, 10.0, 3), 1),
                         update("site-b", state(3.0, 30.0, 8), 3)])
    for site, bn, tracked in (("site-a", 10.0, 3), ("site-b", 30.0, 8)):
        s = strategy.site_state(site)
        torch.testing.assert_close(s["conv.weight"], torch.full((2, 2), (1 * 1 + 3 * 3) / 4))
        assert s["bn.weight"].unique().item() == bn and s["bn.running_mean"].unique().item() == bn
        assert s["bn.num_batches_tracked"].item() == tracked
        assert strategy.payload(site).keys() == initial.keys()
        assert all(torch.equal(strategy.payload(site)[k], s[k]) for k in s)
    # The shared model never absorbs any site's normalization.
    assert strategy.global_state["bn.weight"].unique().item() == 1.0
    assert strategy.site_state("site-c")["bn.weight"].unique().item() == 1.0
    assert strategy.prediction is not Prediction.GLOBAL
    assert sorted(strategy.trained_sites) == ["site-a", "site-b"]


def test_fedbn_from_the_registry_uses_the_models_norm_keys():
    strategy = build_strategy("fedbn", context())
    assert isinstance(strategy, FedBN) and strategy.local_keys == NORM


# --- FedAdam / FedYogi -------------------------------------------------------------------------

LR, B1, B2, TAU = 0.1, 0.9, 0.99, 1e-3


def hand_step(x: float, avg: float, variant: str, m: float = 0.0, v: float = TAU**2):
    """Reddi et al. 2021, Algorithm 2, for one scalar: returns (new x, m, v)."""
    delta = avg - x
    m = B1 * m + (1 - B1) * delta
    if variant == "adam":
        v = B2 * v + (1 - B2) * delta**2
    else:
        v = v - (1 - B2) * delta**2 * math.copysign(1.0, v - delta**2) if v != delta**2 else v
    return x + LR * m / (math.sqrt(v) + TAU), m, v


@pytest.mark.parametrize("variant", ["adam", "yogi"])
def test_fedopt_one_step_matches_a_hand_computation(variant):
    strategy = build_strategy(f"fed{variant}", context(server_lr=LR, beta1=B1, beta2=B2, tau=TAU))
    assert strategy.name == f"fed{variant}"
    one_stage(strategy, [update("site-a", state(1.0, 2.0, 4), 1),
                         update("site-b", state(3.0, 4.0, 6), 1)])
    g = strategy.global_state
    expected_conv, _, _ = hand_step(0.0, 2.0, variant)  # initial conv 0, mean 2
    expected_bn, _, _ = hand_step(1.0, 3.0, variant)  # bn.weight is a parameter: 1 -> mean 3
    torch.testing.assert_close(g["conv.weight"], torch.full((2, 2), expected_conv))
    torch.testing.assert_close(g["bn.weight"], torch.full((2,), expected_bn))
    # Buffers are not parameters: they take the plain mean; counters the maximum.
    torch.testing.assert_close(g["bn.running_mean"], torch.full((2,), 3.0))
    assert g["bn.num_batches_tracked"].item() == 6 and g["conv.weight"].dtype == torch.float32


@pytest.mark.parametrize("variant", ["adam", "yogi"])
def test_fedopt_second_step_carries_its_moments(variant):
    optimizer = AdaptiveServerOptimizer(frozenset({"w"}), variant, LR, B1, B2, TAU)
    x = {"w": torch.tensor([0.0], dtype=torch.float64)}
    x1 = optimizer.step(x, {"w": torch.tensor([1.0], dtype=torch.float64)})
    x2 = optimizer.step(x1, {"w": x1["w"] - 0.5})
    h1, m, v = hand_step(0.0, 1.0, variant)
    h2, _, _ = hand_step(h1, h1 - 0.5, variant, m, v)
    assert x1["w"].item() == pytest.approx(h1, rel=1e-12)
    assert x2["w"].item() == pytest.approx(h2, rel=1e-12)


def test_fedadam_and_fedyogi_differ_when_the_update_is_large():
    adam = AdaptiveServerOptimizer(frozenset({"w"}), "adam", LR, B1, B2, TAU)
    yogi = AdaptiveServerOptimizer(frozenset({"w"}), "yogi", LR, B1, B2, TAU)
    x, avg = {"w": torch.zeros(1, dtype=torch.float64)}, {"w": torch.ones(1, dtype=torch.float64)}
    assert adam.step(x, avg)["w"].item() != yogi.step(x, avg)["w"].item()


# --- SWT / CWT ---------------------------------------------------------------------------------

def swt_holders(n_sites: int, rounds: int) -> list[str]:
    sites = [f"s{k}" for k in range(n_sites)]
    strategy = SequentialTransfer({}, sites, rounds, cyclic=False)
    holders = []
    for r in range(rounds):
        stages = strategy.stages(r, sites)
        assert len(stages) == 1 and len(stages[0]) == 1, "SWT trains one site at a time"
        holders.append(stages[0][0])
    return holders


def test_swt_visits_sites_in_order_each_for_a_block_of_rounds():
    assert swt_holders(3, 6) == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert swt_holders(3, 3) == ["s0", "s1", "s2"]


@given(n_sites=st.integers(1, 8), extra=st.integers(0, 20))
def test_swt_visits_every_site_once_in_order_when_rounds_allow(n_sites, extra):
    holders = swt_holders(n_sites, n_sites + extra)
    visits = [h for i, h in enumerate(holders) if i == 0 or holders[i - 1] != h]
    assert visits == [f"s{k}" for k in range(n_sites)]  # in order, each once, contiguous


def test_swt_with_fewer_rounds_than_sites_still_visits_every_site_or_refuses():
    try:
        RunConfig(data=DataConfig(sites=3), federation=FederationConfig(algorithm="swt", rounds=2))
        strategy = build_strategy("swt", context(rounds=2))
    except ConfigError:
        return  # refused up front: an accepted answer
    visited = [site for r in range(2) for stage in strategy.stages(r, SITES) for site in stage]
    assert visited == SITES


def test_swt_passes_the_model_on():
    strategy = build_strategy("swt", context(rounds=3))
    handed = state(5.0, 5.0)
    one_stage(strategy, [update("site-a", handed, 10)])
    assert strategy.global_state is handed and strategy.payload("site-b") is handed


def test_cwt_visits_every_sampled_site_every_round_one_after_another():
    strategy = build_strategy("cwt", context(rounds=4))
    for r in range(4):
        assert strategy.stages(r, SITES) == [["site-a"], ["site-b"], ["site-c"]]
    assert strategy.stages(0, ["site-c", "site-a"]) == [["site-c"], ["site-a"]]


def test_cwt_each_site_starts_from_the_previous_sites_weights():
    strategy = build_strategy("cwt", context())
    current = strategy.global_state
    for k, stage in enumerate(strategy.stages(0, SITES)):
        (site,) = stage
        assert strategy.payload(site) is current
        current = state(float(k + 1), 0.0)
        one_stage(strategy, [update(site, current, 5)])
    assert strategy.global_state["conv.weight"].unique().item() == 3.0


# --- ensemble ----------------------------------------------------------------------------------

def test_ensemble_keeps_every_sites_own_model_and_averages_nothing():
    initial = state(0.0, 0.0)
    strategy = LocalEnsemble(initial)
    a, b = state(1.0, 1.0), state(2.0, 2.0)
    one_stage(strategy, [update("site-a", a, 10), update("site-b", b, 1000)])
    assert strategy.site_state("site-a") is a and strategy.site_state("site-b") is b
    assert strategy.payload("site-a") is a
    assert strategy.site_state("site-c") is initial and strategy.global_state is initial
    assert strategy.prediction is not Prediction.GLOBAL and strategy.trained_sites == ["site-a", "site-b"]
    assert strategy.stages(0, SITES) == [SITES]


# --- registry ----------------------------------------------------------------------------------

def test_registry_names_equal_the_config_names():
    assert set(ALGORITHMS) == set(config.ALGORITHMS) and len(ALGORITHMS) == len(config.ALGORITHMS)


# split needs a real network to cut, not this test's two-layer state: tests/algorithms/test_split.py
@pytest.mark.parametrize("name", [a for a in config.ALGORITHMS if a != "split"])
def test_every_algorithm_builds_under_its_own_name(name):
    strategy = build_strategy(name, context(rounds=20))  # a run's rounds are chosen by then
    assert strategy.name == name
    assert (strategy.prediction is not Prediction.GLOBAL) == (name in ("fedbn", "ensemble"))
    assert strategy.global_state.keys() == state(0, 0).keys()


def test_an_unknown_algorithm_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        build_strategy("fedavgg", context())
    assert "did you mean 'fedavg'" in str(info.value)
    assert all(name in str(info.value) for name in config.ALGORITHMS)


def test_fedavgm_builds_momentum_on_the_rounds_average():
    """Hsu et al. 2019: m <- beta m + Delta, x <- x + eta m; parameters only, buffers averaged."""
    strategy = build_strategy("fedavgm", context(server_lr=0.5, server_momentum=0.8))
    assert strategy.name == "fedavgm"
    one_stage(strategy, [update("site-a", state(1.0, 2.0, 4), 1),
                         update("site-b", state(3.0, 4.0, 6), 1)])
    g1 = strategy.global_state  # conv: 0 -> mean 2, Delta 2, m 2, x 0 + 0.5 * 2 = 1
    torch.testing.assert_close(g1["conv.weight"], torch.full((2, 2), 1.0))
    torch.testing.assert_close(g1["bn.running_mean"], torch.full((2,), 3.0))
    one_stage(strategy, [update("site-a", state(2.0, 2.0, 7), 1)])
    # Delta 2 - 1 = 1, m = 0.8 * 2 + 1 = 2.6, x = 1 + 0.5 * 2.6 = 2.3
    torch.testing.assert_close(strategy.global_state["conv.weight"], torch.full((2, 2), 2.3))


def test_fedavgm_without_momentum_at_step_one_is_fedavg():
    momentum, plain = build_strategy("fedavgm", context(server_momentum=0.0)), FedAvg(state(0.0, 1.0))
    for strategy in (momentum, plain):
        one_stage(strategy, [update("site-a", state(1.0, 2.0, 4), 1),
                             update("site-b", state(3.0, 5.0, 6), 3)])
    for key, value in plain.global_state.items():
        torch.testing.assert_close(momentum.global_state[key], value)
