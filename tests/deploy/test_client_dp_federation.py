"""Client-level DP (DP-FedAvg) in the deployment, end to end on 127.0.0.1 with mutual TLS: the
server clips each site's update (with secure aggregation the sites clip) and adds the noise to the
sum. Adversary: anyone holding the federation's configuration (every site, the coordinator's
files). Bounded waits; the procs fixture cleans up.

- The deployment's noise is not the simulation's: the configuration's seed cannot regenerate it
  (a deployment seeded from the configuration makes the first test fail), while with the noise
  (nearly) off the deployment trains the simulation's model and epsilon.
- A server SIGKILLed mid-federation and resumed accounts every round (its accountant restored from
  the state: a resume that ignores it counts 2 rounds, not 3) and, with the noise off (sigma = 0:
  even 1e-6 of fresh noise is amplified by Adam into differences of 1e-3), ends with the model of
  an uninterrupted run.
"""

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
    run_killed_and_resumed,
    simulation_config,
    write_federation,
)


def client_dp_federation(path: Path, port: int, noise: float, secure: bool = False, rounds: int = 2
                         ) -> Path:
    privacy = f"\n[privacy]\nclient_dp = true\nclip = 0.5\nnoise = {noise}\n"
    privacy += "secure_aggregation = true\n" if secure else ""
    return write_federation(path, port, rounds=rounds, extra=privacy)


def deploy(procs: Processes, tmp_path: Path, config: Path, certs: Path, port: int) -> Path:
    state = tmp_path / "state"
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    for site in SITES:
        procs.client(site, port, certs)
    assert procs.wait("server", 120) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0
    return state


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in b if b[k].is_floating_point())


@pytest.mark.parametrize("secure", [False, True], ids=["server-clips", "with-secure-aggregation"])
def test_deployed_noise_cannot_be_regenerated_from_the_configuration(tmp_path: Path, procs: Processes,
                                                                     secure: bool):
    port = free_port()
    config = client_dp_federation(tmp_path / "federation.toml", port, noise=0.3, secure=secure)
    state = deploy(procs, tmp_path, config, make_certs(tmp_path / "certs"), port)
    setup = prepare(simulation_config(config))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    deployed = load_file(state / "model.safetensors")
    # sigma S / m = 0.05 per coordinate each round: a regenerated noise would match to 1e-5
    assert max_difference(deployed, outcome.strategy.global_state) > 0.01
    summary = json.loads((state / "summary.json").read_text())
    assert summary["privacy"]["client_dp"]["epsilon"] == outcome.privacy["client_dp"]["epsilon"] > 0
    assert summary["privacy"]["client_dp"]["rounds"] == 2
    assert "OS entropy" in summary["privacy"]["noise"]


def test_a_server_killed_mid_federation_resumes_its_epsilon_and_its_model(tmp_path: Path,
                                                                           procs: Processes):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = client_dp_federation(tmp_path / "federation.toml", port, noise=0.0, rounds=3)
    state = run_killed_and_resumed(procs, tmp_path, config, certs, port)
    for site in SITES:
        assert procs.wait(site, 30) == 0

    setup = prepare(simulation_config(config))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    summary = json.loads((state / "summary.json").read_text())
    assert summary["privacy"]["client_dp"]["rounds"] == outcome.privacy["client_dp"]["rounds"] == 3
    deployed = load_file(state / "model.safetensors")
    for key, value in outcome.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5, msg=key)
