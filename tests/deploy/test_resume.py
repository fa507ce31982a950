"""A server SIGKILLed mid-federation and resumed, with real processes on 127.0.0.1 (mutual TLS),
ends with the model of a run that was never stopped (the simulation's, same seed), for algorithms
whose server keeps more than the global model: FedAdam's moments and SCAFFOLD's control variate
(whose sites also keep their c_k per round, since the round the kill interrupted runs again).
tests/algorithms/test_checkpoint.py covers every algorithm in process.

Deliberate breaks that make this fail (tried by hand): the checkpoint's strategy state not restored
(server._strategy without restore); a site's c_k advanced by a round's first, lost attempt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medfed.experiment import prepare, train
from tests.deploy.processes import (
    Processes,
    events,
    free_port,
    make_certs,
    run_killed_and_resumed,
    simulation_config,
    write_federation,
)


@pytest.mark.parametrize("algorithm", ["fedadam", "scaffold"])
def test_a_server_killed_after_round_one_resumes_to_the_uninterrupted_model(
        tmp_path: Path, procs: Processes, algorithm: str):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=3, min_sites=3)
    config.write_text(config.read_text().replace('algorithm = "fedavg"', f'algorithm = "{algorithm}"'))
    state = run_killed_and_resumed(procs, tmp_path, config, certs, port)
    audit = state / "audit.jsonl"
    assert [e["round"] for e in events(audit, "round_closed")] == [1, 2, 3]

    setup = prepare(simulation_config(config))
    simulated = train(setup, algorithm, setup.federation.sites, algorithm).strategy.global_state
    deployed = load_file(state / "model.safetensors")
    for key, value in simulated.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5, msg=key)
