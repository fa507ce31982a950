"""A deployed federation with compressed updates: `medfed server` and three `medfed client`
processes over gRPC with mutual TLS, each site compressing with the federation's `compress`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from medfed.experiment import prepare, train
from tests.deploy.processes import (
    SITES,
    Processes,
    events,
    free_port,
    make_certs,
    simulation_config,
    write_federation,
)
from tests.deploy.test_federation import start_server


def test_top_k_federation_decodes_at_the_server_and_matches_the_simulation(
        tmp_path: Path, procs: Processes) -> None:
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=2)
    text = config.read_text().replace("[federation]\n", "[federation]\ncompress = \"topk:0.1\"\n")
    config.write_text(text)
    state = start_server(procs, tmp_path, config, certs, port)
    assert procs.wait("server", 120) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0

    closed = events(state / "audit.jsonl", "round_closed")
    assert [e["compression"] for e in closed] == ["topk:0.1", "topk:0.1"]
    assert all(sorted(e["aggregated"]) == list(SITES) for e in closed)
    # Top-k is deterministic: the sites' residuals, kept in each client, give the simulation's model.
    setup = prepare(simulation_config(config))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    deployed = load_file(state / "model.safetensors")
    for key, value in outcome.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5)
    summary = json.loads((state / "summary.json").read_text())
    assert summary["bytes_up"] < 0.5 * 2 * 3 * sum(
        v.numel() * v.element_size() for v in deployed.values())
