"""The deployed site's worker: its share of the configured data, or its own data file; it answers
train and evaluate tasks with safetensors and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfed.config_file import config_from_dict, to_toml
from medfed.deploy.client import SiteWorker
from medfed.errors import ConfigError
from medfed.experiment import prepare, train
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.proto import medfed_pb2 as pb

TINY = {"seed": 0, "device": "cpu", "data": {"sites": 3, "synthetic_samples": 60,
                                              "synthetic_test": 20, "image_size": 16}}


def test_a_site_keeps_its_share_and_trains_and_scores_what_it_is_sent():
    config = config_from_dict(TINY)
    setup = prepare(config)
    worker = SiteWorker(to_toml(config), "site-b")
    assert worker.info["n_train"] == len(setup.federation.sites["site-b"].train)
    blob = encode_state(setup.initial)
    meta, update = worker.run(pb.Task(kind="train", options_json=json.dumps({"epochs": 1})), blob)
    assert meta["n_samples"] == worker.info["n_train"] and decode_state(update).keys() == setup.initial.keys()
    scored, nothing = worker.run(pb.Task(kind="evaluate", options_json='{"split": "val"}'), blob)
    assert "auc" in scored["metrics"] and nothing == b""
    with pytest.raises(ValueError, match="unknown training options"):
        worker.run(pb.Task(kind="train", options_json='{"evil": 1}'), blob)


def test_an_unknown_site_is_a_clear_error():
    with pytest.raises(ConfigError, match="site-z"):
        SiteWorker(to_toml(config_from_dict(TINY)), "site-z")


def test_a_site_with_its_own_data_file_trains_on_all_of_it(medmnist_npz):
    path, arrays = medmnist_npz("grey2d", side=16)
    config = config_from_dict({"seed": 0, "device": "cpu",
                               "data": {"dataset": "medmnist", "data_file": str(path), "sites": 2}})
    worker = SiteWorker(to_toml(config), "hospital-x", data_file=Path(path))
    assert worker.info["site"] == "hospital-x"
    assert worker.info["n_train"] + worker.info["n_val"] == len(arrays["train_labels"]) + len(
        arrays["val_labels"])


def test_a_dp_sgd_site_trains_privately_as_in_the_simulation_and_reports_its_epsilon():
    raw = {**TINY, "baselines": False, "federation": {"rounds": 1},
           "privacy": {"dp_sgd": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}}
    config = config_from_dict(raw)
    setup = prepare(config)
    simulated = train(setup, "fedavg", setup.federation.sites, "fedavg")
    eps_sim = simulated.history[0].epsilon
    for site in ("site-a", "site-c"):  # each with its own sampling rate, so its own epsilon
        worker = SiteWorker(to_toml(config), site)
        meta, _ = worker.run(pb.Task(kind="train", options_json=json.dumps({"epochs": 1})),
                             encode_state(setup.initial))
        assert meta["metrics"]["epsilon"] == pytest.approx(eps_sim[site])
