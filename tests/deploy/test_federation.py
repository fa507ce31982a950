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

from medfed.cli import main
from medfed.deploy.certs import load_identity
from medfed.deploy.server import ServerArgs, serve
from medfed.errors import ConfigError
from medfed.experiment import prepare, train
from medfed.transport.grpc_server import METHOD
from medfed.transport.proto import medfed_pb2 as pb
from tests.deploy.processes import (
    SITES,
    Processes,
    events,
    free_port,
    make_certs,
    simulation_config,
    wait_until,
    write_federation,
)

RUN_KEYS = {"dataset", "algorithm", "rounds", "sites", "test", "wall_seconds", "bytes_up",
            "bytes_down"}
METRIC_KEYS = {"auc", "accuracy", "precision", "recall", "f1", "sensitivity", "specificity"}


def start_server(procs: Processes, tmp_path: Path, config: Path, certs: Path, port: int,
                 *extra: str, name: str = "server", clients: tuple[str, ...] = SITES) -> Path:
    """The server, and (while it loads) the sites' clients, which retry until it listens."""
    state = tmp_path / "state"
    audit = state / "audit.jsonl"
    before = len(events(audit, "server_started"))
    procs.start(name, "server", "--config", str(config), "--certs", str(certs), "--state", str(state),
                *extra)
    for site in clients:
        procs.client(site, port, certs)
    wait_until(lambda: len(events(audit, "server_started")) > before, 60, "the server", procs)
    return state


def try_to_join(port: int, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    """A site-a hello over a channel with these credentials; returns how it was refused."""
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = channel.stream_stream(METHOD, request_serializer=pb.SiteMessage.SerializeToString,
                                     response_deserializer=pb.ServerMessage.FromString)
        hello = pb.SiteMessage(hello=pb.Hello(info_json=json.dumps({"site": "site-a"})))
        with pytest.raises(grpc.RpcError) as refused:
            list(call(iter([hello]), timeout=5))
        return refused.value.code()


def verify_audit(audit: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    """`medfed audit verify FILE`: (exit status, what it printed)."""
    capsys.readouterr()
    status = main(["audit", "verify", str(audit), *extra])
    return status, capsys.readouterr().out.strip()


def test_three_sites_three_fedavg_rounds_with_mtls_strangers_refused_same_model_as_simulation(
        tmp_path: Path, procs: Processes, capsys: pytest.CaptureFixture):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port)
    state = start_server(procs, tmp_path, config, certs, port)
    audit = state / "audit.jsonl"

    # Strangers first: no certificate, and site-a's name on a certificate of another authority
    # (both trust the real server); the TLS handshake refuses them.
    ca = (certs / "ca.crt").read_bytes()
    assert try_to_join(port, grpc.ssl_channel_credentials(ca)) is grpc.StatusCode.UNAVAILABLE
    other = make_certs(tmp_path / "other", sites=("site-a",))
    forged = load_identity(other, "site-a")
    forged_credentials = grpc.ssl_channel_credentials(ca, forged.key, forged.certificate)
    assert try_to_join(port, forged_credentials) is grpc.StatusCode.UNAVAILABLE
    wait_until(lambda: len(events(audit, "auth_failed")) >= 2, 10, "refusals audited", procs)
    reasons = {e["reason"] for e in events(audit, "auth_failed")}
    assert {"no client certificate", "certificate not signed by the federation's authority"} <= reasons

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
    status, printed = verify_audit(audit, capsys)
    assert status == 0 and printed.startswith("ok: ") and "signed by the server's key" in printed
    # Each site kept the signed heads it was sent: the trail agrees with every witness.
    witnesses = [tmp_path / "sites" / f"state-{site}" / "audit-witness.jsonl" for site in SITES]
    status, printed = verify_audit(audit, capsys, *(a for w in witnesses for a in ("--witness", str(w))))
    assert status == 0 and printed.count("signed heads agree") == len(SITES), printed
    keys = [(certs / f"{name}.key").read_text().splitlines()[1] for name in ("server", *SITES)]
    assert "PRIVATE KEY" not in audit.read_text() and not any(k in audit.read_text() for k in keys)

    # Item 8: the same config and seed in simulation give the same global model.
    setup = prepare(simulation_config(config))
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
    status, printed = verify_audit(audit, capsys)
    assert status == 1 and printed.startswith(f"broken at line {target + 1}")


def test_a_client_killed_mid_round_then_the_server_killed_and_resumed_every_round_recorded_once(
        tmp_path: Path, procs: Processes, capsys: pytest.CaptureFixture):
    """One run, two crashes (they share a test to keep the suite fast): site-c's client is killed
    during round 1, so round 1 closes with the others; then the server is killed with SIGKILL after
    round 1 and restarted with --resume: the sites reconnect by themselves and the run completes."""
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=3, epochs=8, batch=4,
                              min_sites_to_start=2)
    state = start_server(procs, tmp_path, config, certs, port)
    audit = state / "audit.jsonl"
    wait_until(lambda: bool(events(audit, "round_started")), 60, "round 1", procs)
    procs.running["site-c"].send_signal(signal.SIGKILL)
    wait_until(lambda: bool(events(audit, "round_closed")), 60, "round 1 closed", procs)
    procs.running["server"].send_signal(signal.SIGKILL)
    procs.wait("server", 10)
    first = events(audit, "round_closed")[0]
    assert first["aggregated"] == ["site-a", "site-b"] and first["left_out"] == ["site-c"]
    rejected = events(audit, "update_rejected")[0]
    assert rejected["round"] == 1 and rejected["site"] == "site-c" and "site-c" in rejected["reason"]
    with pytest.raises(ConfigError, match="--resume"):  # a restart must say it resumes
        serve(ServerArgs(config, certs, state))

    start_server(procs, tmp_path, config, certs, port, "--resume", name="server-resumed",
                 clients=())
    assert procs.wait("server-resumed", 120) == 0, procs.log_text()
    for site in ("site-a", "site-b"):
        assert procs.wait(site, 30) == 0
    with sqlite3.connect(state / "medfed.sqlite") as db:
        assert [r for (r,) in db.execute("SELECT round FROM rounds ORDER BY round")] == [0, 1, 2]
    assert [e["round"] for e in events(audit, "round_closed")] == [1, 2, 3]
    assert len(events(audit, "server_started")) == 2
    assert len((state / "rounds.jsonl").read_text().splitlines()) == 3
    summary = json.loads((state / "summary.json").read_text())
    assert summary["rounds"] == 3 and "site-c" in summary["failed_updates"]["1"]
    status, printed = verify_audit(audit, capsys)
    assert status == 0 and printed.startswith("ok: ") and "signed by the server's key" in printed
