"""One experiment in simulation, on tiny data: seeded setup, training runs, scoring and reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainingConfig
from medfed.evaluation.metrics import METRIC_KEYS, compute_metrics
from medfed.experiment import POOLED, prepare, score_local_models, site_report, train
from medfed.pooled_ddp import pooled_site
from medfed.types import Task


def tiny(**changes) -> RunConfig:
    data = DataConfig(sites=3, synthetic_samples=60, synthetic_test=30,
                      **changes.pop("data", {}))
    federation = FederationConfig(rounds=1, **changes.pop("federation", {}))
    training = TrainingConfig(batch_size=16, **changes.pop("training", {}))
    return RunConfig(device="cpu", data=data, federation=federation, training=training, **changes)


def states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def setup():
    return prepare(tiny())


def test_prepare_builds_sites_model_and_spec_from_the_data(setup):
    fed = setup.federation
    assert fed.partition == "natural" and list(fed.sites) == ["site-a", "site-b", "site-c"]
    assert setup.spec.spatial_dims == 2 and setup.spec.in_channels == 1
    assert setup.spec.num_outputs == 2 and setup.spec.input_size == (32, 32)
    buffers = {k for k in setup.initial
               if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert setup.initial.keys() == setup.parameter_keys | buffers
    assert setup.norm_keys < setup.initial.keys()


def test_prepare_is_a_function_of_the_seed(setup):
    again, other = prepare(tiny()), prepare(tiny(seed=1))
    for site, data in setup.federation.sites.items():
        np.testing.assert_array_equal(data.train.x, again.federation.sites[site].train.x)
        np.testing.assert_array_equal(data.val.y, again.federation.sites[site].val.y)
    assert states_equal(setup.initial, again.initial)
    assert not states_equal(setup.initial, other.initial)
    assert not np.array_equal(setup.federation.sites["site-a"].train.x,
                              other.federation.sites["site-a"].train.x)


def test_image_size_resizes_the_model_input():
    s = prepare(tiny(data={"image_size": 16}))
    assert s.spec.input_size == (16, 16)
    assert s.preprocess(s.federation.source.test.x[:2]).shape == (2, 1, 16, 16)


def test_pooled_site_holds_every_sites_training_and_validation_data(setup):
    pooled = pooled_site(setup.federation)
    assert list(pooled) == [POOLED]
    sites = setup.federation.sites.values()
    assert len(pooled[POOLED].train) == sum(len(s.train) for s in sites)
    assert len(pooled[POOLED].val) == sum(len(s.val) for s in sites)
    assert pooled[POOLED].test is None


def test_training_is_deterministic_and_reports_its_rounds(setup):
    a = train(setup, "fedavg", setup.federation.sites, "a")
    b = train(setup, "fedavg", setup.federation.sites, "b")
    assert len(a.history) == 1 and a.history[0].sites == list(setup.federation.sites)
    assert a.history[0].failed == {}
    assert states_equal(a.strategy.global_state, b.strategy.global_state)
    assert a.test == b.test
    assert not states_equal(a.strategy.global_state, setup.initial)
    assert set(METRIC_KEYS) <= set(a.test) and a.test["n"] == len(setup.federation.source.test)
    assert a.transport.bytes_up > 0 and a.transport.bytes_down > 0
    assert a.history[0].bytes_up + a.history[0].bytes_down > 0


def test_the_ensemble_is_scored_with_the_mean_of_its_site_models(setup):
    outcome = train(setup, "ensemble", setup.federation.sites, "ensemble")
    test = setup.federation.source.test
    probs = np.mean([setup.predictor.predict(outcome.strategy.site_state(s), test)[0]
                     for s in setup.federation.sites], axis=0)
    expected = compute_metrics(Task.BINARY, test.y, probs)
    assert {k: outcome.test[k] for k in METRIC_KEYS} == pytest.approx(
        {k: expected[k] for k in METRIC_KEYS}, nan_ok=True)
    local = score_local_models(setup, outcome)
    assert list(local) == list(setup.federation.sites)
    states = [outcome.strategy.site_state(s) for s in setup.federation.sites]
    assert not states_equal(states[0], states[1])


def test_fedbn_scores_each_test_image_with_its_own_sites_model(setup):
    outcome = train(setup, "fedbn", setup.federation.sites, "fedbn")
    source = setup.federation.source
    probs = np.zeros((len(source.test), 2), np.float32)
    for k, site in enumerate(setup.federation.sites):
        rows = np.flatnonzero(source.test_groups == k)
        probs[rows] = setup.predictor.predict(outcome.strategy.site_state(site),
                                              source.test.subset(rows))[0]
    expected = compute_metrics(Task.BINARY, source.test.y, probs)
    assert {k: outcome.test[k] for k in METRIC_KEYS} == pytest.approx(
        {k: expected[k] for k in METRIC_KEYS}, nan_ok=True)


def test_site_report_has_sizes_label_counts_and_validation_metrics(setup):
    outcome = train(setup, "fedavg", setup.federation.sites, "a")
    report = site_report(setup, outcome)
    for site, data in setup.federation.sites.items():
        entry = report[site]
        assert entry["n_train"] == len(data.train) and entry["n_val"] == len(data.val)
        assert sum(entry["label_counts"]) == len(data.train)
        assert entry["val"]["n"] == len(data.val)
        assert entry["n_test"] == len(data.test) and entry["test"]["n"] == len(data.test)


def test_site_report_scores_validation_even_when_rounds_did_not():
    s = prepare(tiny(federation={"eval_every": 0}))
    outcome = train(s, "fedavg", s.federation.sites, "a")
    assert outcome.history[-1].val == {}
    assert all(entry["val"]["n"] > 0 for entry in site_report(s, outcome).values())


@pytest.mark.parametrize("kind,task,channels,dims", [
    ("grey2d", Task.BINARY, 1, 2),
    ("rgb", Task.ORDINAL, 3, 2),
    ("3d", Task.BINARY, 1, 3),
    ("multilabel", Task.MULTILABEL, 1, 2),
])
def test_every_medmnist_kind_trains_and_scores_end_to_end(medmnist_npz, kind, task, channels, dims):
    path, _ = medmnist_npz(kind, side=8 if kind == "3d" else 16, sizes=(24, 6, 10))
    data = DataConfig(dataset="medmnist", data_file=str(path), sites=2)
    config = RunConfig(device="cpu", data=data,
                       model=ModelConfig("cnn"), federation=FederationConfig(rounds=1),
                       training=TrainingConfig(batch_size=8))
    s = prepare(config)
    assert s.federation.source.task is task and s.federation.partition == "iid"
    assert s.spec.in_channels == channels and s.spec.spatial_dims == dims
    outcome = train(s, "fedavg", s.federation.sites, "fedavg")
    assert set(METRIC_KEYS) <= set(outcome.test) and outcome.test["n"] == 10
    assert ("kappa" in outcome.test) == (task is Task.ORDINAL)
    assert outcome.history[0].failed == {}


def test_baselines_train_every_site_every_round_whatever_the_sampling_fraction():
    setup = prepare(tiny(federation={"fraction": 0.3}))
    sampled = train(setup, "ensemble", setup.federation.sites, "ensemble")
    assert [len(r.sites) for r in sampled.history] == [1]
    local = train(setup, "ensemble", setup.federation.sites, "local", baseline=True)
    assert [len(r.sites) for r in local.history] == [3]


def test_an_ensemble_is_made_of_the_sites_that_trained():
    setup = prepare(tiny(federation={"fraction": 0.3}))
    outcome = train(setup, "ensemble", setup.federation.sites, "ensemble")
    (trained,) = outcome.history[0].sites
    test = setup.federation.source.test
    probs = setup.predictor.predict(outcome.strategy.site_state(trained), test)[0]
    expected = compute_metrics(Task.BINARY, test.y, probs)
    assert outcome.test["auc"] == pytest.approx(expected["auc"], nan_ok=True)


def test_with_every_site_every_round_the_ensembles_site_models_are_the_local_baselines():
    # medfed compare reuses the ensemble's site models as the local-only baselines on this ground.
    setup = prepare(tiny(data={"augment": True}))  # augmentation draws from the sites' generators
    ensemble = train(setup, "ensemble", setup.federation.sites, "ensemble")
    local = train(setup, "ensemble", setup.federation.sites, "local", baseline=True)
    for site in setup.federation.sites:
        assert states_equal(ensemble.strategy.site_state(site), local.strategy.site_state(site))
