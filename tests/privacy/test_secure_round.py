"""Secure aggregation through the real round loop and in-process transport (safetensors bytes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions
from medfed.errors import TransportError
from medfed.privacy.client_dp import ClientDP
from medfed.privacy.noise import Seeded
from medfed.privacy.secagg import SecureAggregationError
from medfed.privacy.secure_round import WEIGHT_KEY, InProcessCoordinator, SecureAggregation, SecureSite
from medfed.privacy.signing import ephemeral_identities
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.transport.inprocess import InProcessTransport
from medfed.types import Update


def initial():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g),
            "bn.num_batches_tracked": torch.tensor(3)}


class FakeSite:
    """A site whose training moves every float weight by a fixed, site-specific change."""

    def __init__(self, site: str, k: int, n: int, fail: bool = False) -> None:
        self.site, self.k, self.n, self.fail = site, k, n, fail
        self.sent: list[Update] = []  # what it would have sent without secure aggregation

    def train(self, state, options):
        if self.fail:
            raise TransportError(f"site {self.site} went offline")
        g = torch.Generator().manual_seed(100 + self.k)
        out = {k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in state.items()}
        update = Update(self.site, out, self.n, 3, {"train_loss": 0.5})
        self.sent.append(update)
        return update

    def evaluate(self, state, split):
        return {"auc": 0.5}


class RecordingTransport(InProcessTransport):
    """Keeps every update exactly as the server received it (decoded from the wire bytes)."""

    def __init__(self, trainers):
        super().__init__(trainers)
        self.received: list[Update] = []

    def train(self, site, state, options):
        update = super().train(site, state, options)
        self.received.append(update)
        return update


def federation(n_sites=5, failing=(), threshold=None, client_dp=None):
    fakes = {f"site-{k}": FakeSite(f"site-{k}", k, 10 * (k + 1), f"site-{k}" in failing)
             for k in range(n_sites)}
    identities = ephemeral_identities(fakes)
    secure = {s: SecureSite(f, clip=client_dp.clip if client_dp else None, identity=identities[s])
              for s, f in fakes.items()}
    transport = RecordingTransport(secure)
    strategy = SecureAggregation(FedAvg(initial()), InProcessCoordinator(secure), threshold,
                                 client_dp=client_dp)
    return fakes, transport, strategy


def run(strategy, transport, sites, rounds=1):
    return run_rounds(strategy, transport, sites, RoundPlan(rounds, eval_every=0), TrainOptions(),
                      np.random.default_rng(0))


def plain_mean(updates):
    total = sum(u.n_samples for u in updates)
    return {k: sum(u.state[k].double() * u.n_samples for u in updates) / total
            for k in ("w", "b")}


def test_secure_round_gives_the_weighted_fedavg_model():
    fakes, transport, strategy = federation()
    history = run(strategy, transport, list(fakes))
    expected = plain_mean([f.sent[0] for f in fakes.values()])
    for key in ("w", "b"):
        torch.testing.assert_close(strategy.global_state[key].double(), expected[key],
                                   atol=1e-6, rtol=0)
    assert strategy.global_state["bn.num_batches_tracked"] == 3  # counters are not aggregated
    assert history[0].sites == list(fakes) and history[0].update_norm == {}


def test_what_the_server_receives_never_equals_a_site_update():
    fakes, transport, strategy = federation()
    run(strategy, transport, list(fakes), rounds=2)
    assert len(transport.received) == 10
    honest = {(u.site, r): u for f in fakes.values() for r, u in enumerate(f.sent)}
    for i, got in enumerate(transport.received):
        sent = honest[(got.site, i // 5)]
        # the sample count travels masked; nothing else that follows a site's size travels at all
        assert got.n_samples == 1 and got.n_steps == 0 and got.metrics == {}
        assert got.state[WEIGHT_KEY].dtype == torch.int64
        for key in ("w", "b"):
            assert got.state[key].dtype == torch.int64  # ring elements, not weights
            as_float = got.state[key].double() / 2 ** 24
            change = (sent.state[key] - initial()[key]).double() * sent.n_samples
            # neither the model, nor its scaled change, nor anything near them
            assert (as_float - change).abs().min() > 1.0
            assert (got.state[key].double() - sent.state[key].double()).abs().min() > 1.0


def test_sites_that_drop_after_masking_are_left_out_of_the_sum():
    fakes, transport, strategy = federation(n_sites=10, failing=("site-2", "site-5", "site-7",
                                                                 "site-9"), threshold=6)
    history = run(strategy, transport, list(fakes))
    survivors = [f.sent[0] for f in fakes.values() if f.sent]
    assert len(survivors) == 6 and set(history[0].failed) == {"site-2", "site-5", "site-7", "site-9"}
    assert history[0].aggregation["dropped_after_masking"] == ["site-2", "site-5", "site-7", "site-9"]
    expected = plain_mean(survivors)
    for key in ("w", "b"):
        torch.testing.assert_close(strategy.global_state[key].double(), expected[key],
                                   atol=1e-6, rtol=0)


def test_a_site_whose_update_cannot_be_encoded_is_a_failed_site():
    fakes, transport, strategy = federation()
    broken = fakes["site-1"]
    honest_train = broken.train
    broken.train = lambda state, options: Update(
        "site-1", {k: v * float("nan") for k, v in honest_train(state, options).state.items()}, 10, 3)
    history = run(strategy, transport, list(fakes))
    assert "cannot send its update" in history[0].failed["site-1"]
    expected = plain_mean([f.sent[0] for s, f in fakes.items() if s != "site-1"])
    torch.testing.assert_close(strategy.global_state["w"].double(), expected["w"], atol=1e-6, rtol=0)


def test_too_many_dropouts_fail_the_round_clearly():
    fakes, transport, strategy = federation(n_sites=10, failing=tuple(f"site-{k}" for k in range(5)),
                                            threshold=6)
    with pytest.raises(SecureAggregationError, match="only 5 of 10 sites delivered masked updates"):
        run(strategy, transport, list(fakes))


def test_client_dp_under_secure_aggregation_clips_at_the_sites_and_noises_the_sum():
    dp = ClientDP(clip=0.5, noise_multiplier=0.0 + 1e-12, sample_rate=1.0, noise=Seeded(0))
    fakes, transport, strategy = federation(client_dp=dp)
    run(strategy, transport, list(fakes))
    start = initial()
    mean_change = torch.cat([strategy.global_state[k].double().flatten() - start[k].double().flatten()
                             for k in ("b", "w")])
    clipped = []
    for f in fakes.values():
        change = torch.cat([(f.sent[0].state[k] - start[k]).double().flatten() for k in ("b", "w")])
        clipped.append(change * min(1.0, 0.5 / float(change.norm())))
    torch.testing.assert_close(mean_change, torch.stack(clipped).mean(0), atol=1e-6, rtol=0)
    assert len(dp.accountant.history) == 1


def test_a_site_without_a_signing_key_refuses_secure_aggregation():
    fakes, transport, strategy = federation(n_sites=3)
    strategy.coordinator.sites["site-1"].identity = None
    with pytest.raises(SecureAggregationError, match="site site-1 has no certificate key to sign"):
        run(strategy, transport, list(fakes))


def test_a_configured_threshold_at_or_below_half_the_round_stops_it():
    fakes, transport, strategy = federation(n_sites=4, threshold=2)
    with pytest.raises(SecureAggregationError, match="threshold above half of the 4 sites"):
        run(strategy, transport, list(fakes))
