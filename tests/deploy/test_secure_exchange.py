"""The gRPC coordinator and the sites' answers, over a real gRPC server in this process: sites that
mask with the simulation's SecureSite answer the server's secure aggregation tasks, and the test
inspects what the server received."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
import torch

from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions
from medfed.config import DataConfig, PrivacyConfig, RunConfig
from medfed.deploy import secure_exchange
from medfed.deploy.secure_exchange import GrpcCoordinator
from medfed.errors import TransportError
from medfed.privacy.secagg import SecureAggregationError
from medfed.privacy.secure_round import WEIGHT_KEY, SecureAggregation, SecureSite
from medfed.privacy.signing import ephemeral_identities
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.grpc_channel import CLIENT_OPTIONS
from medfed.transport.grpc_transport import GrpcTransport
from medfed.transport.proto import medfed_pb2 as pb
from tests.privacy.test_secure_round import FakeSite as TrainingSite
from tests.privacy.test_secure_round import initial, plain_mean
from tests.transport.test_grpc import FakeSite, Rounds, result

SITES = ["site-0", "site-1", "site-2"]
CONFIG = RunConfig(data=DataConfig(sites=len(SITES)),
                   privacy=PrivacyConfig(secure_aggregation=True, threshold=2))
IDENTITIES = ephemeral_identities(SITES)


class Recording(GrpcTransport):
    """Keeps every update exactly as the server received it over gRPC."""

    received: list

    def train(self, site, state, options):
        update = super().train(site, state, options)
        self.received.append(update)
        return update


def answering(site: SecureSite, silent_at_unmask: bool = False, forge_advert: bool = False):
    """A site's gRPC answers: JSON for the protocol's tasks, its masked update for training;
    forge_advert: its key advert carries a signature that is not its own."""

    def answer(task: pb.Task, blob: bytes) -> list[pb.SiteMessage]:
        if silent_at_unmask and task.kind == secure_exchange.UNMASK:  # gone after masking
            return [pb.SiteMessage(result=pb.Result(task_id=task.task_id, error="gone"))]
        if task.kind in secure_exchange.KINDS:
            reply = secure_exchange.answer(site, CONFIG, task.kind, json.loads(blob))
            if forge_advert and task.kind == secure_exchange.ADVERTISE:
                reply["advert"]["signature"] = base64.b64encode(b"\x00" * 64).decode()
            return result(task, b"", meta=reply)
        try:
            update = site.train(decode_state(blob), TrainOptions())
        except TransportError as exc:  # the site reports its failure, as medfed client does
            return [pb.SiteMessage(result=pb.Result(task_id=task.task_id, error=str(exc)))]
        return result(task, encode_state(update.state),
                      meta={"n_samples": update.n_samples, "n_steps": update.n_steps,
                            "metrics": update.metrics})

    return answer


def federation(serve, failing=(), silent=(), forgers=(), server_checks_adverts=True):
    registry, port, audit = serve(SITES)
    honest = {s: TrainingSite(s, k, 10 * (k + 1), s in failing) for k, s in enumerate(SITES)}
    fakes = [FakeSite(grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS), s,
                      answering(SecureSite(honest[s], identity=IDENTITIES[s]), s in silent,
                                s in forgers))
             for s in SITES]
    assert registry.wait_for(len(SITES), timeout=10)
    transport = Recording(registry, round_seconds=20.0, eval_seconds=5.0)
    transport.received = []
    trust = IDENTITIES[SITES[0]].trust if server_checks_adverts else None  # the federation's CA
    strategy = SecureAggregation(FedAvg(initial()), GrpcCoordinator(transport, trust), threshold=2)
    return honest, fakes, transport, strategy, audit


def run(strategy, transport, rounds=1):
    return run_rounds(strategy, transport, SITES, RoundPlan(rounds, eval_every=0), TrainOptions(),
                      np.random.default_rng(0), Rounds(transport))


def test_the_server_receives_masked_inputs_over_grpc_and_unmasks_their_weighted_mean(serve):
    honest, fakes, transport, strategy, audit = federation(serve)
    try:
        run(strategy, transport, rounds=2)
    finally:
        for fake in fakes:
            fake.stop()
    assert len(transport.received) == 6
    for i, got in enumerate(transport.received):
        sent = honest[got.site].sent[i // 3]
        assert got.n_samples == 1 and got.n_steps == 0 and got.metrics == {}
        assert got.state[WEIGHT_KEY].dtype == torch.int64
        for key in ("w", "b"):
            assert got.state[key].dtype == torch.int64  # ring elements, not weights
            change = (sent.state[key] - initial()[key]).double() * sent.n_samples
            assert (got.state[key].double() / 2 ** 24 - change).abs().min() > 1.0
            assert (got.state[key].double() - sent.state[key].double()).abs().min() > 1.0
    events = [e for e, _ in audit]
    assert events.count("masked_input_received") == 6 and "update_received" not in events
    assert events.count("secagg_keys_shared") == 2 and events.count("unmask_requested") == 2
    signed = [f for e, f in audit if e == "survivors_signed"]
    assert [f["sites"] for f in signed] == [SITES, SITES]


def test_one_round_over_grpc_gives_the_plain_weighted_mean(serve):
    honest, fakes, transport, strategy, _ = federation(serve)
    try:
        run(strategy, transport)
    finally:
        for fake in fakes:
            fake.stop()
    expected = plain_mean([honest[s].sent[0] for s in SITES])
    for key in ("w", "b"):
        torch.testing.assert_close(strategy.global_state[key].double(), expected[key],
                                   atol=1e-6, rtol=0)


def test_a_site_gone_after_sending_its_masked_input_is_unmasked_by_the_others(serve):
    honest, fakes, transport, strategy, audit = federation(serve, silent=("site-2",))
    try:
        run(strategy, transport)
    finally:
        for fake in fakes:
            fake.stop()
    expected = plain_mean([honest[s].sent[0] for s in SITES])  # its input counts: it arrived
    for key in ("w", "b"):
        torch.testing.assert_close(strategy.global_state[key].double(), expected[key],
                                   atol=1e-6, rtol=0)
    answered = [f for e, f in audit if e == "unmask_answered"]
    assert answered[0]["sites"] == ["site-0", "site-1"]
    assert [f["site"] for e, f in audit if e == "secagg_no_answer"] == ["site-2"]


def test_a_sites_unsigned_key_advert_leaves_out_that_site_not_the_round(serve):
    """Attacker: site-2, with a valid certificate, sends a well-formed key advert whose
    signature is not its own. Every honest site would refuse a key book holding it (stopping
    every round); the server checks each advert against the CA first and leaves out site-2."""
    honest, fakes, transport, strategy, audit = federation(serve, forgers=("site-2",))
    try:
        run(strategy, transport)
    finally:
        for fake in fakes:
            fake.stop()
    expected = plain_mean([honest[s].sent[0] for s in SITES[:2]])
    for key in ("w", "b"):
        torch.testing.assert_close(strategy.global_state[key].double(), expected[key],
                                   atol=1e-6, rtol=0)
    refused = [f for e, f in audit if e == "secagg_no_answer"]
    assert [f["site"] for f in refused] == ["site-2"] and "advert refused" in refused[0]["reason"]


def test_without_the_servers_advert_check_one_forged_advert_stops_the_round(serve):
    """The deliberate break of the test above: the server relays adverts unchecked."""
    _, fakes, transport, strategy, _ = federation(serve, forgers=("site-2",),
                                                  server_checks_adverts=False)
    try:
        with pytest.raises(SecureAggregationError):
            run(strategy, transport)
    finally:
        for fake in fakes:
            fake.stop()


def test_fewer_survivors_than_the_threshold_fail_the_round_clearly(serve):
    _, fakes, transport, strategy, audit = federation(serve, failing=("site-1", "site-2"))
    try:
        with pytest.raises(SecureAggregationError, match="fewer than the threshold t = 2"):
            run(strategy, transport)
    finally:
        for fake in fakes:
            fake.stop()
    assert not [e for e, _ in audit if e == "unmask_requested"]


def test_a_site_refuses_a_threshold_below_its_configuration():
    site = SecureSite(TrainingSite("site-0", 0, 10), identity=IDENTITIES["site-0"])
    params = {"sites": SITES, "threshold": 2, "length": 5, "context": ""}
    strict = RunConfig(data=DataConfig(sites=len(SITES)),
                       privacy=PrivacyConfig(secure_aggregation=True, threshold=3))
    with pytest.raises(SecureAggregationError, match="refuses threshold 2, below 3"):
        secure_exchange.answer(site, strict, secure_exchange.ADVERTISE, {"params": params})
    params["threshold"] = 3  # stricter than configured is fine
    reply = secure_exchange.answer(site, CONFIG, secure_exchange.ADVERTISE, {"params": params})
    assert reply["advert"]["site"] == "site-0"


def test_a_site_refuses_a_threshold_at_or_below_half_the_round():
    site = SecureSite(TrainingSite("site-0", 0, 10), identity=IDENTITIES["site-0"])
    params = {"sites": [*SITES, "site-3"], "threshold": 2, "length": 5, "context": ""}
    with pytest.raises(SecureAggregationError, match="threshold t = 2 is not above half"):
        secure_exchange.answer(site, CONFIG, secure_exchange.ADVERTISE, {"params": params})


def test_a_site_without_a_certificate_key_refuses_to_advertise():
    site = SecureSite(TrainingSite("site-0", 0, 10))  # a client started with --insecure
    params = {"sites": SITES, "threshold": 2, "length": 5, "context": ""}
    with pytest.raises(SecureAggregationError, match="no certificate key .* not --insecure"):
        secure_exchange.answer(site, CONFIG, secure_exchange.ADVERTISE, {"params": params})
