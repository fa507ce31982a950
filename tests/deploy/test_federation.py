"""End to end on 127.0.0.1: `medfed server` and three `medfed client` processes with mutual TLS.

Each test runs real processes through the CLI on tiny synthetic data (seconds per round), bounds
every wait, and kills whatever is left at teardown (the procs fixture).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from medfed.deploy.settings import load_federation
from medfed.experiment import prepare, train
from medfed.transport.grpc_server import METHOD
from medfed.transport.proto import medfed_pb2 as pb
from tests.deploy.processes import (
    SITES,
    Processes,
    events,
    free_port,
    make_certs,
    medfed,
    wait_until,
    write_federation,
)

RUN_KEYS = {"dataset", "algorithm", "rounds", "sites", "test", "wall_seconds", "bytes_up",
            "bytes_down"}
METRIC_KEYS = {"auc", "accuracy", "precision", "recall", "f1", "sensitivity", "specificity"}


def start_server(procs: Processes, tmp_path: Path, config: Path, certs: Path, *extra: str,
                 name: str = "server") -> Path:
    state = tmp_path / "state"
    audit = state / "audit.jsonl"
    before = len(events(audit, "server_started"))
    procs.start(name, "server", "--config", str(config), "--certs", str(certs), "--state", str(state),
                *extra)
    wait_until(lambda: len(events(audit, "server_started")) > before, 60, "the server", procs)
    return state


def try_without_certificate(port: int, ca: bytes) -> grpc.StatusCode:
    """A TLS client that trusts the server but presents no certificate of its own."""
    with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca)) as channel:
        call = channel.stream_stream(METHOD, request_serializer=pb.SiteMessage.SerializeToString,
                                     response_deserializer=pb.ServerMessage.FromString)
        hello = pb.SiteMessage(hello=pb.Hello(info_json=json.dumps({"site": "site-a"})))
        with pytest.raises(grpc.RpcError) as refused:
            list(call(iter([hello]), timeout=5))
        return refused.value.code()


def test_three_sites_three_fedavg_rounds_with_mtls_strangers_refused_same_model_as_simulation(
        tmp_path: Path, procs: Processes):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port)
    state = start_server(procs, tmp_path, config, certs)
    audit = state / "audit.jsonl"

    # Strangers first: no certificate, and site-a's name on a certificate of another authority.
    assert try_without_certificate(port, (certs / "ca.crt").read_bytes()) is grpc.StatusCode.UNAVAILABLE
    other = make_certs(tmp_path / "other", sites=("site-a",))
    (other / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())  # it trusts the real server
    procs.client("site-a", port, other, "--retry-for", "1")
    assert procs.wait("site-a", 30) == 1
    wait_until(lambda: len(events(audit, "auth_failed")) >= 2, 10, "refusals audited", procs)
    reasons = {e["reason"] for e in events(audit, "auth_failed")}
    assert {"no client certificate", "certificate not signed by the federation's authority"} <= reasons
    assert not events(audit, "site_connected")

    for site in SITES:
        procs.client(site, port, certs)
    assert procs.wait("server", 120) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0

    summary = json.loads((state / "summary.json").read_text())
    assert RUN_KEYS <= summary.keys() and METRIC_KEYS <= summary["test"].keys()
    assert summary["rounds"] == 3 and set(summary["sites"]) == set(SITES)
    closed = events(audit, "round_closed")
    assert [e["round"] for e in closed] == [1, 2, 3]
    assert all(sorted(e["aggregated"]) == list(SITES) for e in closed)
    assert len(events(audit, "update_received")) == 9
    assert medfed("audit", "verify", str(audit)).stdout.strip() == "ok"

    # Item 8: the same config and seed in simulation give the same global model.
    run_config, _ = load_federation(config)
    setup = prepare(run_config)
    simulated = train(setup, "fedavg", setup.federation.sites, "fedavg").strategy.global_state
    deployed = load_file(state / "model.safetensors")
    assert deployed.keys() == simulated.keys()
    for key, value in simulated.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5)

    # Editing one audit line is detected (exit status 1), and names the line.
    lines = audit.read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if '"update_received"' in line)
    record = json.loads(lines[target])
    record["n_samples"] += 1
    lines[target] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    audit.write_text("\n".join(lines) + "\n")
    broken = medfed("audit", "verify", str(audit))
    assert broken.returncode == 1 and f"line {target + 1}" in broken.stdout


def test_a_client_killed_mid_round_the_round_closes_with_the_others(tmp_path: Path, procs: Processes):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=2, epochs=8, batch=4)
    state = start_server(procs, tmp_path, config, certs)
    audit = state / "audit.jsonl"
    for site in SITES:
        procs.client(site, port, certs)
    wait_until(lambda: bool(events(audit, "round_started")), 60, "round 1", procs)
    procs.running["site-c"].send_signal(signal.SIGKILL)
    assert procs.wait("server", 120) == 0, procs.log_text()
    first = events(audit, "round_closed")[0]
    assert first["aggregated"] == ["site-a", "site-b"] and first["left_out"] == ["site-c"]
    rejected = [e for e in events(audit, "update_rejected") if e["round"] == 1]
    assert rejected[0]["site"] == "site-c" and "site-c" in rejected[0]["reason"]
    assert len(events(audit, "round_closed")) == 2
    summary = json.loads((state / "summary.json").read_text())
    assert "site-c" in summary["failed_updates"]["0"]


def test_server_killed_with_sigkill_resumes_and_records_every_round_once(tmp_path: Path,
                                                                         procs: Processes):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=3, epochs=2, batch=8)
    state = start_server(procs, tmp_path, config, certs)
    audit = state / "audit.jsonl"
    for site in SITES:
        procs.client(site, port, certs)
    wait_until(lambda: len(events(audit, "round_closed")) >= 1, 90, "round 1 closed", procs)
    procs.running["server"].send_signal(signal.SIGKILL)
    procs.wait("server", 10)
    refused = medfed("server", "--config", str(config), "--certs", str(certs), "--state", str(state))
    assert refused.returncode == 2 and "--resume" in refused.stderr

    start_server(procs, tmp_path, config, certs, "--resume", name="server-resumed")
    assert procs.wait("server-resumed", 120) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0
    with sqlite3.connect(state / "medfed.sqlite") as db:
        assert [r for (r,) in db.execute("SELECT round FROM rounds ORDER BY round")] == [0, 1, 2]
    assert [e["round"] for e in events(audit, "round_closed")] == [1, 2, 3]
    assert len(events(audit, "server_started")) == 2
    assert len((state / "rounds.jsonl").read_text().splitlines()) == 3
    assert json.loads((state / "summary.json").read_text())["rounds"] == 3
    assert medfed("audit", "verify", str(audit)).returncode == 0
