"""FedNova: FedAvg when every site takes the same number of steps (the paper's reduction), the
normalized update otherwise, and the momentum normalizer against its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medfed.algorithms.fedavg import FedAvg
from medfed.algorithms.fednova import FedNova, step_norm
from medfed.types import Update

PARAMS = frozenset({"w"})


def state(w, running=0.0, tracked=0):
    return {"w": torch.tensor(w, dtype=torch.float32), "bn.running_mean": torch.tensor([running]),
            "bn.num_batches_tracked": torch.tensor(tracked)}


def run_stage(strategy, updates):
    strategy.open_stage()
    for u in updates:
        strategy.receive(u)
    strategy.close_stage()
    return strategy.global_state


site_updates = st.lists(st.tuples(st.lists(st.floats(-5, 5, width=32), min_size=3, max_size=3),
                                  st.integers(1, 1000)), min_size=1, max_size=6)


@given(site_updates, st.integers(1, 50), st.sampled_from([0.0, 0.5, 0.9]))
def test_fednova_is_fedavg_when_every_site_takes_the_same_number_of_steps(updates, steps, momentum):
    initial = state([0.1, -0.2, 0.3])
    batch = [Update(f"s{k}", state(w, running=float(k), tracked=k), n, steps)
             for k, (w, n) in enumerate(updates)]
    nova = run_stage(FedNova(initial, PARAMS, momentum), batch)
    avg = run_stage(FedAvg(initial), batch)
    for key in avg:
        torch.testing.assert_close(nova[key], avg[key], rtol=1e-5, atol=1e-5)


def test_fednova_normalizes_each_change_by_its_steps():
    initial = state([0.0, 0.0, 0.0])
    # Site a: 1 step moved w by +1 (rate +1 per step); site b: 4 steps moved it by -2 (-0.5 per step).
    updates = [Update("a", state([1.0, 1.0, 1.0]), 100, 1), Update("b", state([-2.0, -2.0, -2.0]), 300, 4)]
    new = run_stage(FedNova(initial, PARAMS), updates)
    p = np.array([0.25, 0.75])
    tau_eff = p @ np.array([1, 4])  # 3.25
    expected = tau_eff * (p @ np.array([1.0, -0.5]))  # x - tau_eff sum p_k (x - x_k)/tau_k
    np.testing.assert_allclose(new["w"].numpy(), np.full(3, expected), rtol=1e-6)
    fedavg = run_stage(FedAvg(initial), updates)["w"][0].item()
    assert fedavg == pytest.approx(p @ np.array([1.0, -2.0]))  # -1.25: pulled to the busy site
    assert expected == pytest.approx(-0.40625)


def test_fednova_averages_buffers_like_fedavg_and_keeps_counter_maxima():
    initial = state([0.0, 0.0, 0.0])
    updates = [Update("a", state([1, 1, 1], running=2.0, tracked=3), 1, 1),
               Update("b", state([1, 1, 1], running=4.0, tracked=7), 3, 5)]
    new = run_stage(FedNova(initial, PARAMS), updates)
    assert new["bn.running_mean"].item() == pytest.approx(3.5)
    assert new["bn.num_batches_tracked"].item() == 7


def test_a_site_that_took_no_step_changes_nothing():
    initial = state([0.5, 0.5, 0.5])
    new = run_stage(FedNova(initial, PARAMS), [Update("a", state([9.0, 9.0, 9.0]), 10, 0)])
    assert new is initial


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("tau", [1, 2, 7, 40])
def test_step_norm_is_the_sum_of_the_momentum_sgd_step_coefficients(tau, rho):
    """With heavy-ball momentum, the gradient of step j reaches the final model with weight
    1 + rho + ... + rho^(tau-1-j); a_k sums those weights."""
    brute_force = sum(sum(rho**i for i in range(tau - j)) for j in range(tau))
    assert step_norm(tau, rho) == pytest.approx(brute_force)
