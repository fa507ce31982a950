"""Client-level DP (DP-FedAvg) in the deployment, end to end on 127.0.0.1 with mutual TLS: the
server clips each site's update (with secure aggregation the sites clip) and adds the noise to the
sum, so the deployed model and epsilon equal the simulation's for the same configuration and seed.
(They did not while the noise was drawn in the state's key order: safetensors delivers keys
sorted, the in-process state in module order.) Bounded waits; the procs fixture cleans up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medfed.experiment import prepare, train
from tests.deploy.processes import (
    SITES,
    Processes,
    free_port,
    make_certs,
    simulation_config,
    write_federation,
)

CLIENT_DP = """
[privacy]
client_dp = true
clip = 0.5
noise = 0.3
"""


@pytest.mark.parametrize("secure", [False, True], ids=["server-clips", "with-secure-aggregation"])
def test_client_dp_deployed_gives_the_simulations_model_and_epsilon(tmp_path: Path, procs: Processes,
                                                                    secure: bool):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=2)
    privacy = CLIENT_DP + ("secure_aggregation = true\n" if secure else "")
    config.write_text(config.read_text().replace("[deployment]", privacy + "\n[deployment]"))
    state = tmp_path / "state"
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    for site in SITES:
        procs.client(site, port, certs)
    assert procs.wait("server", 120) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0

    setup = prepare(simulation_config(config))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    deployed = load_file(state / "model.safetensors")
    for key, value in outcome.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5, msg=key)
    summary = json.loads((state / "summary.json").read_text())
    assert summary["privacy"]["client_dp"]["epsilon"] == outcome.privacy["client_dp"]["epsilon"] > 0
