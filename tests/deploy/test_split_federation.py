"""Split learning (SplitFed, U-shaped) over the real deployment: `medfed server` on 127.0.0.1 with
mutual TLS, the sites' clients calling the server's middle once per batch (deploy/split_service.py).

- One site: the deployed model is the simulation's with the same seed (one site's batches reach
  the middle in one order in both), also when the server is killed after round 1 and resumed. With several sites the deployed sites train in parallel, so
  the order in which their batches reach the shared middle, and with it the model, depends on
  timing; the several-site test checks what does not: the run completes, every message is what
  the protocol allows, and a hostile site fails alone.
- A site whose policy does not opt in (`allow_split_learning`) refuses the plan in one line before
  it trains or calls the middle; the server logs and audits the refusal (by the site).
- Three sites, two honest and one hostile, all in this process with their channels wrapped by an
  interceptor that keeps every split-learning call they send: the server receives only one tensor
  per call, named activations or gradient, never a batch's images, and no per-sample feature that
  equals the batch's labels (checked on batches holding both classes: a label column in a batch of
  one class would be a constant column, which a ReLU network also makes by itself); site-c sends
  wrongly shaped activations in round 1 and a gradient with no forward in round 2, and is refused
  and recorded as that site's failure each time (`update_rejected`), while the rounds close with
  the honest sites and the server exits 0.

Deliberate breaks that make these tests fail (each tried by hand):
- checked_tensor's shape comparison removed (the wider activations site-c sends are ones the middle
  can compute): site-c's round 1 is no longer refused for its shape.
- MiddleEnd.backward no longer refusing a gradient without a forward in flight (nor SplitFed's own
  check): round 2's reason is not "no forward pass in flight".
- SitePolicy.refusal ignoring allow_split_learning: the site without it takes part.
- GrpcTransport not counting the calls' bytes: the one-site test's bytes fall short of the
  simulation's.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from medfed.client.trainer import SiteTrainer
from medfed.deploy import client as client_module
from medfed.deploy.client import ClientArgs, run_client
from medfed.deploy.site_config import load_site_config
from medfed.experiment import prepare, train
from medfed.transport import grpc_split
from medfed.transport.codec import decode_metadata, decode_state, encode_state
from medfed.transport.grpc_split import GrpcWire
from medfed.transport.proto import medfed_pb2 as pb
from medfed.transport.split_channel import ACTIVATIONS, GRADIENT
from tests.deploy.processes import (
    Processes,
    events,
    free_port,
    make_certs,
    run_killed_and_resumed,
    simulation_config,
    wait_until,
    write_federation,
    write_site_config,
)

CNN = '\n[model]\nmodel = "cnn"\n'
OPT_IN = {"allow_split_learning": True}  # a site takes part in split learning only by its policy


def split_federation(path: Path, port: int, sites: tuple[str, ...], rounds: int, min_sites: int
                     ) -> Path:
    write_federation(path, port, rounds=rounds, min_sites=min_sites,
                     min_sites_to_start=len(sites), sites=sites, extra=CNN)
    path.write_text(path.read_text().replace('algorithm = "fedavg"', 'algorithm = "split"'))
    return path


def start_split_server(tmp_path: Path, procs: Processes, sites: tuple[str, ...], rounds: int,
                       min_sites: int) -> tuple[int, Path, Path, Path]:
    """Certificates for the sites and a split-learning `medfed server` on a free loopback port:
    (port, certs, federation file, state folder)."""
    port = free_port()
    certs = make_certs(tmp_path / "certs", sites)
    config = split_federation(tmp_path / "federation.toml", port, sites, rounds=rounds,
                              min_sites=min_sites)
    state = tmp_path / "state"
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    return port, certs, config, state


def test_one_site_split_over_grpc_gives_the_simulations_model_and_bytes(tmp_path: Path,
                                                                        procs: Processes):
    sites = ("site-a",)
    port, certs, config, state = start_split_server(tmp_path, procs, sites, 2, 1)
    procs.client("site-a", port, certs, policy=OPT_IN)
    assert procs.wait("server", 120) == 0, procs.log_text()
    assert procs.wait("site-a", 30) == 0, procs.log_text()
    assert [e["aggregated"] for e in events(state / "audit.jsonl", "round_closed")] == [["site-a"]] * 2

    setup = prepare(simulation_config(config))
    simulated = train(setup, "split", {"site-a": setup.federation.sites["site-a"]}, "split")
    deployed = load_file(state / "model.safetensors")
    assert deployed.keys() == simulated.strategy.global_state.keys()
    for key, value in simulated.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # Every batch's activations and gradients are in the round's bytes, as in simulation (which
    # counts the same site parts and tensors; the validation answer's JSON differs by its framing).
    rounds = [json.loads(line) for line in (state / "rounds.jsonl").read_text().splitlines()]
    channel = simulated.transport.channel
    assert sum(r["bytes_down"] for r in rounds) >= channel.bytes_down > 0
    assert sum(r["bytes_up"] for r in rounds) >= channel.bytes_up > 0
    for deployed_round, simulated_round in zip(rounds, simulated.history, strict=True):
        assert abs(deployed_round["bytes_up"] - simulated_round.bytes_up) < 200
        assert deployed_round["bytes_down"] == simulated_round.bytes_down


def test_a_site_that_has_not_opted_in_refuses_split_learning_and_the_server_audits_it(
        tmp_path: Path, procs: Processes):
    sites = ("site-a",)
    port, certs, _, state = start_split_server(tmp_path, procs, sites, 1, 1)
    procs.client("site-a", port, certs)  # the default policy
    assert procs.wait("site-a", 60) == 2, procs.log_text()
    said = (procs.logs / "site-a.log").read_text()
    assert "set allow_split_learning = true in [policy]" in said and "Traceback" not in said
    assert "bytes of activations" not in said  # it trained nothing, sent nothing
    audit = state / "audit.jsonl"
    wait_until(lambda: events(audit, "site_refused"), 10, "the refusal audited", procs)
    refusal = events(audit, "site_refused")[0]
    assert refusal["site"] == "site-a" and refusal["by"] == "the site"
    assert "allow_split_learning = false" in refusal["reason"]
    assert "allow_split_learning" in (procs.logs / "server.log").read_text()
    assert not events(audit, "round_closed") and not events(audit, "update_rejected")


def test_a_split_server_killed_after_round_1_and_resumed_ends_with_the_simulations_model(
        tmp_path: Path, procs: Processes):
    """The checkpoint holds the middle and the site parts; the site, cut off mid-round, reconnects
    and trains the round again from the same state and data order."""
    port, sites = free_port(), ("site-a",)
    certs = make_certs(tmp_path / "certs", sites)
    config = split_federation(tmp_path / "federation.toml", port, sites, rounds=3, min_sites=1)
    state = run_killed_and_resumed(procs, tmp_path, config, certs, port, sites=["site-a"],
                                   policy=OPT_IN)
    audit = state / "audit.jsonl"
    assert procs.wait("site-a", 30) == 0, procs.log_text()
    assert [e["round"] for e in events(audit, "round_closed")] == [1, 2, 3]

    setup = prepare(simulation_config(config))
    simulated = train(setup, "split", {"site-a": setup.federation.sites["site-a"]}, "split")
    deployed = load_file(state / "model.safetensors")
    for key, value in simulated.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5, msg=key)


class SplitCapture(grpc.UnaryUnaryClientInterceptor):
    """Keeps every split-learning call a site's client sends (method, request)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, pb.SplitTensor]] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.sent.append((client_call_details.method, request))
        return continuation(client_call_details, request)


class Hostile:
    """site-c's wire, broken on purpose: in round 1 its first activations are two pixels wider
    than the cut's (which the middle could compute), in round 2 its first call is a gradient
    with no forward before it."""

    def __init__(self, real_forward) -> None:
        self.real_forward = real_forward
        self.calls = 0

    def forward(self, wire: GrpcWire, site: str, blob: bytes) -> bytes:
        if site != "site-c":
            return self.real_forward(wire, site, blob)
        self.calls += 1
        activations = decode_state(blob)[ACTIVATIONS]
        if self.calls == 1:
            wider = torch.nn.functional.pad(activations, (1, 1, 1, 1))
            return self.real_forward(wire, site, encode_state({ACTIVATIONS: wider}))
        gradient = torch.zeros(activations.shape[0], 1)  # refused before its shape is looked at
        return wire._call(grpc_split.BACKWARD, encode_state({GRADIENT: gradient}))


def test_three_sites_labels_and_images_stay_home_and_a_hostile_site_fails_alone(
        tmp_path: Path, procs: Processes, monkeypatch: pytest.MonkeyPatch):
    sites = ("site-a", "site-b", "site-c")
    port, certs, _, state = start_split_server(tmp_path, procs, sites, 2, 2)
    captures = {site: SplitCapture() for site in sites}
    batches: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {site: [] for site in sites}
    real_channel, real_batch = client_module._channel, SiteTrainer.build_batch

    def spied(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
        site = threading.current_thread().name
        return grpc.intercept_channel(real_channel(address, credentials), captures[site])

    def recorded(self, samples, index, affines):
        x, y = real_batch(self, samples, index, affines)
        batches[threading.current_thread().name].append((x.clone(), y.clone()))
        return x, y

    hostile = Hostile(GrpcWire.forward)
    monkeypatch.setattr(client_module, "_channel", spied)
    monkeypatch.setattr(SiteTrainer, "build_batch", recorded)
    monkeypatch.setattr(GrpcWire, "forward", lambda wire, site, blob: hostile.forward(wire, site, blob))
    results = run_sites(tmp_path, port, certs, sites)
    assert procs.wait("server", 120) == 0, procs.log_text()
    assert results == {s: 0 for s in sites}

    audit = state / "audit.jsonl"
    closed = events(audit, "round_closed")
    assert [sorted(e["aggregated"]) for e in closed] == [["site-a", "site-b"]] * 2
    rejected = {e["round"]: e for e in events(audit, "update_rejected")}
    assert set(rejected) == {1, 2} and all(e["site"] == "site-c" for e in rejected.values())
    assert "activations: shape" in rejected[1]["reason"], rejected[1]
    assert "no forward pass in flight" in rejected[2]["reason"], rejected[2]

    checked = 0
    for site in ("site-a", "site-b"):
        sent = captures[site].sent
        forwards = [m for method, m in sent if method.endswith("/Forward")]
        assert len(forwards) == len(batches[site]) > 0
        assert len(sent) == 2 * len(forwards)  # a backward for every forward
        for (method, message), (x, y) in zip(sent, [b for b in batches[site] for _ in (0, 1)],
                                             strict=True):
            assert decode_metadata(message.tensor) == {}
            (name, tensor), = decode_state(message.tensor).items()
            assert name == (ACTIVATIONS if method.endswith("/Forward") else GRADIENT)
            assert tensor.shape[0] == len(y) and tensor.shape != x.shape  # never the images
            if len(y.unique()) == 2:
                assert not holds_labels(tensor, y), (site, method)
                leaky = torch.cat([tensor.reshape(len(y), -1), y.float()[:, None]], dim=1)
                assert holds_labels(leaky, y)  # the inspection would see a leak
                checked += 1
    assert checked > 0
    summary = json.loads((state / "summary.json").read_text())
    # every honest call's tensor is in the run's bytes (site-c's calls were refused: none counted)
    split_bytes = sum(len(m.tensor) for s in ("site-a", "site-b") for _, m in captures[s].sent)
    assert summary["bytes_up"] > split_bytes
    log = (tmp_path / "sites" / "state-site-a" / "site.log").read_text()
    assert "bytes of activations and gradients" in log  # the hospital sees what it sent


def holds_labels(tensor: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether some per-sample feature of the tensor equals the batch's labels."""
    rows = tensor.reshape(tensor.shape[0], -1)
    return bool((rows == labels.float().reshape(-1, 1)).all(dim=0).any())


def run_sites(tmp_path: Path, port: int, certs: Path, sites: tuple[str, ...]) -> dict[str, int]:
    """The sites' clients in this process, one thread each (named for its site); their exit codes."""
    configs = {s: load_site_config(write_site_config(tmp_path / "sites" / f"{s}.toml", s,
                                                     policy=OPT_IN), None, {})
               for s in sites}
    results: dict[str, int] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, run_client(ClientArgs(
        f"127.0.0.1:{port}", configs[s], certs, max_backoff=1.0, retry_for=60, once=True))),
        name=s, daemon=True) for s in sites]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    return results
