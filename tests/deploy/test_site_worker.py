"""The deployed site's worker: the site's own data (its share of the synthetic federation, or its
own file), checked against the federation's task; it answers train, evaluate and final tasks with
safetensors and aggregates, as the simulation's sites would."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from medfed.config_file import config_from_dict, to_toml
from medfed.data.harmonize import Quantiles, reference
from medfed.deploy.site_config import load_site_config
from medfed.deploy.site_data import load_site_data
from medfed.deploy.site_worker import REFERENCE, SiteWorker, Welcome
from medfed.errors import ConfigError
from medfed.evaluation.federated import parse_summary
from medfed.experiment import prepare, train
from medfed.task_schema import TaskSchema
from medfed.transport.codec import decode_state, encode_state
from medfed.types import Task

SYNTHETIC = {"dataset": "synthetic", "sites": 3, "synthetic_samples": 60, "synthetic_test": 20,
             "image_size": 16}
TINY = {"seed": 0, "device": "cpu", "data": SYNTHETIC}
SITES = ["site-a", "site-b", "site-c"]


def worker_for(site: str, raw: dict = TINY, data: dict = SYNTHETIC, **task: object) -> SiteWorker:
    local = load_site_data(load_site_config(None, site, data))
    schema = replace(local.schema, **task) if task else local.schema
    welcome = Welcome.parse(to_toml(config_from_dict(raw)),
                            json.dumps({"task": schema.to_json(), "index": SITES.index(site)
                                        if site in SITES else 0, "sites": SITES}))
    return SiteWorker(local, welcome, site)


def test_a_site_keeps_its_share_and_trains_and_scores_what_it_is_sent():
    setup = prepare(config_from_dict(TINY))
    worker = worker_for("site-b")
    assert worker.info["n_train"] == len(setup.federation.sites["site-b"].train)
    blob = encode_state(setup.initial)
    meta, update = worker.run("train", {"epochs": 1}, blob)
    assert meta["n_samples"] == worker.info["n_train"]
    assert decode_state(update).keys() == setup.initial.keys()
    scored, nothing = worker.run("evaluate", {"split": "val"}, blob)
    assert "auc" in scored["metrics"] and nothing == b""
    with pytest.raises(ValueError, match="unknown training options"):
        worker.run("train", {"evil": 1}, blob)


def test_the_final_answer_is_aggregates_that_the_server_can_parse_and_no_per_image_value():
    setup = prepare(config_from_dict(TINY))
    worker = worker_for("site-a", {**TINY, "federation": {"rounds": 1}})
    final, _ = worker.run("final", {"baselines": True}, encode_state(setup.initial))
    for split in ("val", "test"):
        summary = parse_summary(final[split], Task.BINARY, 2)
        assert summary.n == worker.local.sizes[f"n_{split}"]
    text = json.dumps(final)
    n_test = worker.local.sizes["n_test"]
    assert len(text) < 40_000  # histograms and counts (about 6.5 KB a split), not a score per image
    assert final["local"]["paired"]["method"] in ("DeLong", "none")
    assert final["metrics"]["test"]["n"] == n_test


def test_an_unknown_site_of_the_synthetic_federation_is_a_clear_error():
    with pytest.raises(ConfigError, match="site-z"):
        load_site_data(load_site_config(None, "site-z", SYNTHETIC))


def test_a_site_whose_data_does_not_fit_the_task_refuses_to_train():
    with pytest.raises(ConfigError, match="channels 1, expected 3"):
        worker_for("site-a", channels=3)
    with pytest.raises(ConfigError, match="classes normal, finding, expected"):
        worker_for("site-a", classes=("healthy", "sick"))


def test_a_site_with_its_own_medmnist_file_trains_on_all_of_it(medmnist_npz):
    path, arrays = medmnist_npz("grey2d", side=16)
    data = {"dataset": "medmnist", "data_file": str(path)}
    local = load_site_data(load_site_config(None, "hospital-x", data))
    assert local.data.site == "hospital-x"
    assert local.sizes["n_train"] + local.sizes["n_val"] == len(arrays["train_labels"]) + len(
        arrays["val_labels"])
    assert local.sizes["n_test"] == len(arrays["test_labels"])


def test_histogram_harmonization_at_a_site_equals_the_simulations():
    """The reference travels in the task options; the site's images end as in harmonize_source."""
    raw = {**TINY, "data": {**SYNTHETIC, "harmonize": "histogram"}}
    setup = prepare(config_from_dict(raw))
    workers = [worker_for(s, harmonize="histogram") for s in SITES]
    fits = [Quantiles(np.asarray(w.info["quantiles"]["values"]), w.info["quantiles"]["n_pixels"])
            for w in workers]
    target = reference(fits).tolist()
    blob = encode_state(setup.initial)
    for site, worker in zip(SITES, workers, strict=True):
        worker.run("evaluate", {"split": "val", REFERENCE: target}, blob)
        simulated = setup.federation.sites[site]
        np.testing.assert_allclose(worker.base.data.train.x, simulated.train.x, atol=1e-6)


def test_a_dp_sgd_site_trains_privately_as_in_the_simulation_and_reports_its_epsilon():
    raw = {**TINY, "baselines": False, "federation": {"rounds": 1},
           "privacy": {"dp_sgd": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}}
    setup = prepare(config_from_dict(raw))
    simulated = train(setup, "fedavg", setup.federation.sites, "fedavg")
    eps_sim = simulated.history[0].epsilon
    for site in ("site-a", "site-c"):  # each with its own sampling rate, so its own epsilon
        worker = worker_for(site, raw)
        meta, _ = worker.run("train", {"epochs": 1}, encode_state(setup.initial))
        assert meta["metrics"]["epsilon"] == pytest.approx(eps_sim[site])


def test_the_schema_of_a_site_is_read_off_its_data():
    local = load_site_data(load_site_config(None, "site-a", SYNTHETIC))
    assert local.schema == TaskSchema(Task.BINARY, ("normal", "finding"), 2, 1, 16)
