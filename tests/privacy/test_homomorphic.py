"""Homomorphic aggregation (CKKS, TenSEAL) through the real round loop and in-process transport.

Hand mutations these tests catch (each was tried, and a test failed):
- the server's strategy gets the secret context (HomomorphicAggregation built with it, or
  ckks.load's private check removed): test_the_server_refuses_a_context_that_can_decrypt and
  test_the_simulation_gives_the_server_only_the_public_context fail
- the site sends n_k (x_k - x) in the clear beside its ciphertexts, or its count or loss:
  test_what_the_server_receives_is_no_site_update fails
- the server skips the count / length / scale check of ciphertexts: test_bad_ciphertexts_are_
  that_sites_failure fails
- a site decrypts whatever it is sent, as often as asked: test_a_site_decrypts_one_sum_per_round fails
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tenseal", reason="homomorphic encryption needs TenSEAL: pip install 'medfed[he]'")

from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions
from medfed.errors import ConfigError, IncompatibleUpdate
from medfed.privacy import ckks
from medfed.privacy.homomorphic import (
    CIPHERTEXT_PREFIX,
    HomomorphicAggregation,
    HomomorphicError,
    HomomorphicSite,
    InProcessDecryptor,
    agreed,
    ciphertext_key,
)
from medfed.types import Update
from tests.privacy.test_secure_round import FakeSite, RecordingTransport, initial, plain_mean, run

CONTEXT = ckks.new_context()  # (secret, public): keys take ~0.1 s, shared by the tests


def federation(n_sites=4, patterns=(), failing=()):
    secret, public = CONTEXT
    fakes = {f"site-{k}": FakeSite(f"site-{k}", k, 10 * (k + 1), f"site-{k}" in failing)
             for k in range(n_sites)}
    sites = {s: HomomorphicSite(f, secret, patterns) for s, f in fakes.items()}
    transport = RecordingTransport(sites)
    strategy = HomomorphicAggregation(FedAvg(initial()), public,
                                      InProcessDecryptor(sites, transport), patterns)
    return fakes, sites, transport, strategy


def test_the_decrypted_sum_is_the_weighted_fedavg_mean_within_ckks_precision():
    fakes, _, transport, strategy = federation()
    history = run(strategy, transport, list(fakes), rounds=2)
    expected = plain_mean([f.sent[-1] for f in fakes.values()])  # round 2 starts from round 1's
    for key in ("w", "b"):
        torch.testing.assert_close(strategy.global_state[key].double(), expected[key],
                                   atol=1e-6, rtol=0)
    assert strategy.global_state["bn.num_batches_tracked"] == 3  # counters are not aggregated
    assert [r.protection for r in history] == ["homomorphic:all"] * 2
    assert history[0].update_norm == {} and history[0].sites == list(fakes)


def test_ckks_precision_holds_at_update_magnitudes_and_large_weights():
    """n_k up to 10^5 and changes of 10^-6 to 1: the mean comes back within 1e-7 of the truth."""
    secret, public = CONTEXT
    site, server = ckks.load(secret, private=True), ckks.load(public, private=False)
    rng = np.random.default_rng(0)
    d = 2 * ckks.SLOTS + 7  # three ciphertexts, the last one partly filled
    changes = [rng.normal(0, 10.0 ** -rng.integers(0, 7), d) for _ in range(5)]
    weights = [1, 10, 1000, 50_000, 100_000]
    total = None
    for w, change in zip(weights, changes):
        blobs = ckks.encrypt(site, np.concatenate([w * change, [w]]))
        total = ckks.add(total, ckks.parse(server, blobs, d + 1))
    values = ckks.decrypt(site, ckks.serialize(total), d + 1)
    assert abs(values[-1] - sum(weights)) < 1e-3
    mean = sum(w * c for w, c in zip(weights, changes)) / sum(weights)
    assert np.abs(values[:-1] / round(values[-1]) - mean).max() < 1e-7


def test_the_server_context_cannot_decrypt():
    secret, public = CONTEXT
    server = ckks.load(public, private=False)
    assert not server.is_private()
    blobs = ckks.encrypt(ckks.load(secret, private=True), np.arange(5.0))
    with pytest.raises(ValueError, match="secret"):
        ckks.decrypt(server, blobs, 5)


def test_the_server_refuses_a_context_that_can_decrypt():
    secret, _ = CONTEXT
    with pytest.raises(ConfigError, match="secret key"):
        HomomorphicAggregation(FedAvg(initial()), secret, InProcessDecryptor({}))
    with pytest.raises(ConfigError, match="no secret key"):
        HomomorphicSite(FakeSite("site-0", 0, 10), CONTEXT[1])


def test_what_the_server_receives_is_no_site_update():
    fakes, _, transport, strategy = federation()
    run(strategy, transport, list(fakes))
    for got in transport.received:
        assert got.n_samples == 1 and got.n_steps == 0 and got.metrics == {}
        assert set(got.state) == {"bn.num_batches_tracked", *(ciphertext_key(i) for i in range(1))}
        assert all(v.dtype == torch.uint8 for k, v in got.state.items() if k.startswith(CIPHERTEXT_PREFIX))
        blob = got.state[ciphertext_key(0)].numpy().tobytes()
        sent = fakes[got.site].sent[0]
        for key in ("w", "b"):  # neither the weights nor the weighted change appear in the bytes
            change = ((sent.state[key] - initial()[key]) * sent.n_samples).numpy()
            assert change.astype(np.float64).tobytes()[:16] not in blob
            assert sent.state[key].numpy().tobytes()[:16] not in blob


def test_chosen_layers_are_encrypted_and_the_rest_averaged_in_the_clear():
    fakes, _, transport, strategy = federation(patterns=("w",))
    history = run(strategy, transport, list(fakes))
    expected = plain_mean([f.sent[0] for f in fakes.values()])
    for key in ("w", "b"):
        torch.testing.assert_close(strategy.global_state[key].double(), expected[key],
                                   atol=1e-6, rtol=0)
    got = transport.received[0]
    assert "w" not in got.state and "b" in got.state and got.n_samples == 10  # b travels plain
    assert history[0].protection == "homomorphic:w"


def test_a_pattern_that_matches_no_layer_is_one_clear_line():
    with pytest.raises(ConfigError, match="matches no layer"):
        HomomorphicAggregation(FedAvg(initial()), CONTEXT[1], InProcessDecryptor({}), ("fc.*",))


@pytest.mark.parametrize("corrupt, reason", [
    (lambda s: {k: v for k, v in s.items() if k != ciphertext_key(0)}, "expected 1 ciphertexts"),
    (lambda s: s | {ciphertext_key(0): torch.zeros(100, dtype=torch.uint8)}, "does not parse"),
    (lambda s: s | {ciphertext_key(0): torch.zeros(0, dtype=torch.uint8)}, "holds 0 values"),
    (lambda s: s | {ciphertext_key(0): torch.zeros(10, dtype=torch.int64)}, "uint8"),
    (lambda s: s | {ciphertext_key(0): torch.zeros(ckks.CIPHERTEXT_BYTES + 1, dtype=torch.uint8)},
     "bytes, over"),
])
def test_bad_ciphertexts_are_that_sites_failure(corrupt, reason):
    fakes, sites, transport, strategy = federation()
    honest = sites["site-1"].train

    def corrupted(state, options):
        update = honest(state, options)
        return Update(update.site, corrupt(update.state), update.n_samples, update.n_steps)

    sites["site-1"].train = corrupted
    history = run(strategy, transport, list(fakes))
    assert reason in history[0].failed["site-1"]
    expected = plain_mean([f.sent[0] for s, f in fakes.items() if s != "site-1"])
    torch.testing.assert_close(strategy.global_state["w"].double(), expected["w"], atol=1e-6, rtol=0)


def test_a_ciphertext_of_another_length_is_refused():
    secret, public = CONTEXT
    blobs = ckks.encrypt(ckks.load(secret, private=True), np.ones(7))
    with pytest.raises(IncompatibleUpdate, match="holds 7 values, expected 8"):
        ckks.parse(ckks.load(public, private=False), blobs, 8)


def test_a_site_decrypts_one_sum_per_round():
    fakes, sites, transport, strategy = federation()
    run(strategy, transport, list(fakes))
    site = sites["site-0"]
    summed = ckks.encrypt(site.context, np.ones(31))
    with pytest.raises(HomomorphicError, match="once"):
        site.decrypt(summed, 31, 0)  # round 1's sum was decrypted already
    with pytest.raises(HomomorphicError, match="round 3"):
        site.decrypt(summed, 31, 2)  # it sent nothing in round 3
    site.train(initial(), TrainOptions(round=3))
    with pytest.raises(HomomorphicError, match="10000000 values"):
        site.decrypt(summed, 10_000_000, 3)  # not what it sent: a server cannot make it allocate


def test_disagreeing_decryptions_stop_the_round():
    good = np.zeros(4)
    assert agreed({"a": good, "b": good + 1e-9}, 5) is not None
    with pytest.raises(HomomorphicError, match="disagree"):
        agreed({"a": good, "b": good + 1.0}, 5)
    with pytest.raises(HomomorphicError, match="disagree"):
        agreed({"a": good, "b": np.zeros(3)}, 5)
    with pytest.raises(HomomorphicError, match="no site"):
        agreed({}, 5)
