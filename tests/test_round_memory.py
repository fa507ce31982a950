"""Many sites, flat memory: what a simulation holds does not grow with its number of sites.

- The in-process sites of one training run share one model (SiteRecipe.shares_model), except
  under DP-SGD, whose Opacus hooks make a model a site's own; sharing changes no result.
- The round loop with FedAvg's streaming mean keeps no site's update once it is aggregated, so
  the updates alive at any time are as many at 50 sites as at 5; the median (a robust statistic
  that needs every update) is the documented exception.
- A finished run holds as many tensors at 25 sites as at 5: no site keeps an optimizer, an update
  or a model copy, and the round history holds numbers only.

Counts, not timings or RSS. Hand mutations that make a test here fail: build `recipe.model()` per
site in experiment._site_transport again; make shares_model() always True (DP-SGD) or always False;
keep every update in FedAvg.receive (self._kept.append(update)); make WeightedMean hold its inputs;
keep each site's optimizer in SiteTrainer._local_steps (self._optimizer = optimizer); keep the update
in the round result (result.kept = update in round_loop._receive).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from medfed.algorithms.aggregators import RobustSettings, build_aggregator
from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions
from medfed.config import DataConfig, FederationConfig, ModelConfig, PrivacyConfig, RunConfig, TrainingConfig
from medfed.experiment import Setup, _site_transport, prepare, site_recipe, train
from medfed.privacy.mechanisms import Mechanisms
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.simulated_site import SiteRecipe
from medfed.types import Metrics, SiteId, StateDict, Update


def tiny(sites: int, **changes) -> RunConfig:
    data = DataConfig(sites=sites, synthetic_samples=6 * sites, synthetic_test=20, augment=False)
    return RunConfig(device="cpu", data=data, federation=FederationConfig(rounds=2, eval_every=0,
                                                                      keep_best=False),
                     **{"training": TrainingConfig(batch_size=4), **changes})


def site_models(sites: int, **changes) -> list[torch.nn.Module]:
    """The model of each in-process site of a federated training run (DPSite: its trainer's)."""
    setup = prepare(tiny(sites, **changes))
    ids = list(setup.federation.sites)
    transport = _site_transport(setup, setup.federation.sites, site_recipe(setup, None),
                                Mechanisms.build(setup.config, ids))
    return [getattr(t, "trainer", t).model for t in transport.trainers.values()]


@pytest.mark.parametrize("sites", [5, 50])
def test_in_process_sites_of_a_run_share_one_model(sites):
    models = site_models(sites)
    assert len(models) == sites
    assert len({id(m) for m in models}) == 1


def test_dp_sgd_sites_keep_a_model_each():
    privacy = PrivacyConfig(dp_sgd=True, noise_multiplier=1.0)
    models = site_models(3, privacy=privacy, model=ModelConfig(norm="group"),
                         training=TrainingConfig())
    assert len({id(m) for m in models}) == 3


@pytest.fixture(scope="module")
def three_sites() -> Setup:
    return prepare(tiny(3))


@pytest.mark.parametrize("algorithm", ["scaffold", "fedbn"])
def test_sharing_the_model_changes_no_result(algorithm, three_sites, monkeypatch):
    """SCAFFOLD (c_k in the trainer) and FedBN (local norm layers) keep per-site state: a shared
    model must train exactly as one model per site."""
    setup = three_sites
    shared = train(setup, algorithm, setup.federation.sites, algorithm).strategy
    monkeypatch.setattr(SiteRecipe, "shares_model", lambda self, private: False)
    alone = train(setup, algorithm, setup.federation.sites, algorithm).strategy
    for site in setup.federation.sites:
        a, b = shared.site_state(site), alone.site_state(site)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class CountingTransport:
    """Answers every site with a fresh update and records, at each call, how many of the updates it
    gave out earlier are still alive somewhere (in the round loop, the strategy, the aggregator)."""

    def __init__(self) -> None:
        self.bytes_up = self.bytes_down = 0
        self._given: list[weakref.ref] = []
        self.most_alive = 0

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        alive = sum(ref() is not None for ref in self._given)
        self.most_alive = max(self.most_alive, alive)
        out = {k: v + 1.0 for k, v in state.items()}
        self._given.append(weakref.ref(out["w"]))
        return Update(site=site, state=out, n_samples=3, n_steps=1, metrics={})

    def evaluate(self, site: SiteId, state: StateDict, split: str) -> Metrics:
        return {}


def updates_alive(sites: int, aggregator: str = "mean") -> int:
    initial = {"w": torch.zeros(64)}
    factory = build_aggregator(aggregator, RobustSettings())
    transport = CountingTransport()
    run_rounds(FedAvg(initial, aggregator=factory), transport, [f"s{k}" for k in range(sites)],
               RoundPlan(rounds=2, eval_every=0), TrainOptions(), np.random.default_rng(0))
    return transport.most_alive


def test_streaming_fedavg_keeps_no_site_update_after_aggregating_it():
    assert updates_alive(5) == updates_alive(50) <= 1  # the loop's last update, until the next


def test_the_median_holds_every_update_of_a_stage():
    """The exception the design names: a robust statistic needs all updates (and says so)."""
    assert updates_alive(50, "median") == 49


def tensors_alive() -> int:
    gc.collect()
    # type(), not isinstance(): the latter reads __class__, which warns on torch's deprecated names
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


def tensors_kept_by_a_run(sites: int) -> int:
    """Tensors alive after a whole training run (its outcome still held) that were not before."""
    setup = prepare(tiny(sites, training=TrainingConfig(batch_size=4, local_steps=1)))
    before = tensors_alive()
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    kept = tensors_alive() - before
    assert len(outcome.history) == 2
    return kept


def test_a_finished_run_keeps_no_tensor_per_site():
    tensors_kept_by_a_run(2)  # the first training of a process loads torch's lazy modules
    assert tensors_kept_by_a_run(5) == tensors_kept_by_a_run(25)
