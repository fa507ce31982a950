"""The in-process transport: real encoding (so byte counts are real and nothing is shared), real
site trainers on a tiny data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.data.dataset import Samples, SiteData
from medfed.data.transforms import Preprocess
from medfed.errors import TransportError
from medfed.models import ModelSpec, build_model
from medfed.transport.codec import encode_state
from medfed.transport.inprocess import InProcessTransport
from medfed.types import Task

SPEC = ModelSpec(2, 1, 2)


def site_data(name: str, seed: int, n_train: int = 10) -> SiteData:
    rng = np.random.default_rng(seed)

    def samples(n):
        return Samples(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), np.arange(n) % 2)

    return SiteData(name, samples(n_train), samples(4))


def trainer(name: str = "site-a", seed: int = 0) -> SiteTrainer:
    return SiteTrainer(site_data(name, seed), build_model("cnn", SPEC, 0), Task.BINARY,
                       Preprocess(255.0, None), torch.device("cpu"), seed=seed, augment=True)


def initial_state():
    return {k: v.clone() for k, v in build_model("cnn", SPEC, 1).state_dict().items()}


OPTIONS = TrainOptions(epochs=1, batch_size=4, lr=1e-2)


def test_train_returns_the_sites_update_with_the_models_keys_shapes_and_dtypes():
    transport = InProcessTransport({"site-a": trainer()})
    state = initial_state()
    update = transport.train("site-a", state, OPTIONS)
    assert update.site == "site-a"
    assert update.n_samples == 10
    assert update.n_steps == 3  # batches of 4, 4 and 2
    assert update.state.keys() == state.keys()
    for key, value in state.items():
        assert update.state[key].dtype == value.dtype and update.state[key].shape == value.shape
    assert any(not torch.equal(update.state[k], state[k]) for k in state)  # it trained
    assert update.metrics["train_loss"] > 0


def test_byte_counts_are_the_encoded_message_sizes():
    transport = InProcessTransport({"site-a": trainer()})
    state = initial_state()
    update = transport.train("site-a", state, OPTIONS)
    assert transport.bytes_down == len(encode_state(state))
    reply = encode_state(update.state, {"n_samples": update.n_samples, "n_steps": update.n_steps,
                                        "metrics": update.metrics})
    assert transport.bytes_up == len(reply)


def test_server_and_site_never_share_a_tensor():
    site = trainer()
    transport = InProcessTransport({"site-a": site})
    state = initial_state()
    before = {k: v.clone() for k, v in state.items()}
    update = transport.train("site-a", state, OPTIONS)
    assert all(torch.equal(state[k], before[k]) for k in state)  # the server's copy is untouched
    site_params = {p.data_ptr() for p in site.model.state_dict().values()}
    assert not site_params & {t.data_ptr() for t in update.state.values()}
    update.state["head.weight"].fill_(123.0)
    assert not torch.equal(site.model.state_dict()["head.weight"], update.state["head.weight"])


def test_training_an_unknown_site_is_a_transport_error():
    transport = InProcessTransport({"site-a": trainer()})
    with pytest.raises(TransportError, match="unknown site 'site-x'"):
        transport.train("site-x", initial_state(), OPTIONS)


def test_evaluating_an_unknown_site_is_a_transport_error():
    transport = InProcessTransport({"site-a": trainer()})
    with pytest.raises(TransportError, match="unknown site 'site-x'"):
        transport.evaluate("site-x", initial_state(), "val")


def test_evaluate_returns_only_metrics_of_the_sites_split():
    transport = InProcessTransport({"site-a": trainer()})
    metrics = transport.evaluate("site-a", initial_state(), "val")
    assert metrics["n"] == 4.0 and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    assert transport.bytes_down > 0 and transport.bytes_up > 0


def test_training_is_a_function_of_the_site_seed():
    def trained(seed):
        transport = InProcessTransport({"site-a": trainer(seed=seed)})
        return transport.train("site-a", initial_state(), OPTIONS).state

    a, b = trained(0), trained(0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other_seed = SiteTrainer(site_data("site-a", 0), build_model("cnn", SPEC, 0), Task.BINARY,
                             Preprocess(255.0, None), torch.device("cpu"), seed=99, augment=True)
    c = InProcessTransport({"site-a": other_seed}).train("site-a", initial_state(), OPTIONS).state
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_the_proximal_term_keeps_the_update_closer_to_the_global_model():
    state = initial_state()

    def distance(mu):
        update = InProcessTransport({"site-a": trainer()}).train(
            "site-a", state, TrainOptions(epochs=3, batch_size=4, lr=0.05, optimizer="sgd",
                                          proximal_mu=mu))
        return sum(float(((update.state[k] - state[k]) ** 2).sum()) for k in state
                   if state[k].is_floating_point() and "running" not in k)

    assert distance(1.0) < distance(0.0)


def test_a_crash_at_a_site_is_that_sites_transport_error():
    broken = trainer()
    broken.train = lambda state, options: (_ for _ in ()).throw(RuntimeError("out of memory"))
    transport = InProcessTransport({"site-a": broken})
    with pytest.raises(TransportError, match="site site-a failed: RuntimeError: out of memory"):
        transport.train("site-a", initial_state(), OPTIONS)
