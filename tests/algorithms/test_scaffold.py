"""SCAFFOLD: the server's step, the site's control variates, and the paper's reductions to FedAvg
(control variates at zero; a single site)."""

from __future__ import annotations

import torch

from medfed.algorithms.scaffold import Scaffold
from medfed.client.trainer import TrainOptions
from medfed.config import DataConfig, FederationConfig, RunConfig, TrainingConfig
from medfed.experiment import site_trainers, prepare, train
from medfed.types import CONTROL_PREFIX, Update, split_control

PARAMS = frozenset({"w"})


def state(w, running=0.0):
    return {"w": torch.tensor(w, dtype=torch.float32), "bn.running_mean": torch.tensor([running])}


def control(c):
    return {CONTROL_PREFIX + "w": torch.tensor(c, dtype=torch.float32)}


def test_the_payload_carries_the_model_and_the_server_control_variate():
    strategy = Scaffold(state([1.0, 2.0]), PARAMS, ["a", "b"])
    strategy.open_stage()
    payload = strategy.payload("a")
    model, c = split_control(payload)
    assert model.keys() == {"w", "bn.running_mean"} and torch.equal(c["w"], torch.zeros(2))
    assert strategy.payload("b") is payload  # one message per stage: encoded once
    assert CONTROL_PREFIX + "w" not in strategy.global_state


def test_server_step_is_the_weighted_mean_and_c_moves_by_the_control_changes_over_all_sites():
    strategy = Scaffold(state([0.0, 0.0]), PARAMS, ["a", "b", "c", "d"])
    strategy.open_stage()
    strategy.receive(Update("a", state([1.0, 1.0], 2.0) | control([4.0, 0.0]), 10, 5))
    strategy.receive(Update("b", state([3.0, 3.0], 4.0) | control([0.0, 8.0]), 30, 5))
    strategy.close_stage()
    torch.testing.assert_close(strategy.global_state["w"], torch.tensor([2.5, 2.5]))
    torch.testing.assert_close(strategy.global_state["bn.running_mean"], torch.tensor([3.5]))
    # c <- c + (1/N) sum over the sampled sites, N = 4 sites in all
    torch.testing.assert_close(strategy.control["w"], torch.tensor([1.0, 2.0]))
    strategy.open_stage()
    torch.testing.assert_close(split_control(strategy.payload("a"))[1]["w"], torch.tensor([1.0, 2.0]))


def tiny(algorithm: str, sites: int, rounds: int, optimizer: str = "sgd") -> RunConfig:
    return RunConfig(device="cpu", baselines=False,
                     data=DataConfig(sites=sites, synthetic_samples=30 * sites, synthetic_test=20,
                                     augment=False),
                     federation=FederationConfig(algorithm=algorithm, rounds=rounds, eval_every=0),
                     training=TrainingConfig(batch_size=16, optimizer=optimizer, lr=0.05,
                                             momentum=0.0))


def final_state(config: RunConfig):
    setup = prepare(config)
    return train(setup, config.federation.algorithm, setup.federation.sites, "t").strategy.global_state


def test_first_round_with_zero_control_variates_is_fedavg():
    scaffold = final_state(tiny("scaffold", sites=3, rounds=1))
    fedavg = final_state(tiny("fedavg", sites=3, rounds=1))
    for key in fedavg:
        torch.testing.assert_close(scaffold[key], fedavg[key], rtol=1e-6, atol=1e-7)


def test_a_single_site_stays_fedavg_round_after_round():
    """With one site, c = c_k after the first round, so the correction c - c_k vanishes in the
    second. (From the third round on, c = c + (c_k+ - c_k) equals c_k+ only up to float rounding,
    and twenty local steps a round amplify that residue to ~1e-3: exactness is checked where the
    arithmetic is exact.)"""
    scaffold = final_state(tiny("scaffold", sites=1, rounds=2))
    fedavg = final_state(tiny("fedavg", sites=1, rounds=2))
    for key in fedavg:
        torch.testing.assert_close(scaffold[key], fedavg[key], rtol=1e-6, atol=1e-7)


def test_several_sites_differ_from_fedavg_once_control_variates_are_learned():
    scaffold = final_state(tiny("scaffold", sites=3, rounds=3))
    fedavg = final_state(tiny("fedavg", sites=3, rounds=3))
    assert any(not torch.allclose(scaffold[k], fedavg[k], atol=1e-4) for k in fedavg)


def test_the_site_keeps_c_k_and_returns_its_change_by_option_two():
    config = tiny("scaffold", sites=1, rounds=1)
    setup = prepare(config)
    trainer = site_trainers(setup, setup.federation.sites)["site-a"]
    options = TrainOptions(batch_size=16, lr=0.05, optimizer="sgd", momentum=0.0, scaffold=True)
    server_c = {k: torch.full_like(setup.initial[k], 0.01) for k in setup.parameter_keys}
    sent = setup.initial | {CONTROL_PREFIX + k: v for k, v in server_c.items()}
    update = trainer.train(sent, options)
    model, change = split_control(update.state)
    assert change.keys() == setup.parameter_keys
    for k in setup.parameter_keys:  # c_k+ = c_k - c + (x - y) / (K lr), with c_k = 0 before
        expected = -server_c[k] + (setup.initial[k] - model[k]) / (update.n_steps * 0.05)
        torch.testing.assert_close(change[k], expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(trainer.control[k], expected, rtol=1e-4, atol=1e-6)
