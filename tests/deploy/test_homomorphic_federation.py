"""A deployed federation with homomorphic encryption: `medfed server` and three `medfed client`
processes over gRPC with mutual TLS; the sites encrypt with SITE.ckks, the server adds ciphertexts
under server.ckks (no secret key) and the sites decrypt the sum.

Hand mutation this catches: the server given the secret context (server.ckks a copy of a site's)
would decrypt; test_a_server_given_the_secret_context_refuses_to_start fails if ckks.load's check
is removed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medfed.deploy import certs
from medfed.experiment import prepare, train
from medfed.privacy import ckks
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

pytestmark = pytest.mark.skipif(not ckks.available(), reason="homomorphic encryption needs "
                                                             "TenSEAL: pip install 'medfed[he]'")
# SGD: Adam would magnify CKKS's 1e-9 differences between two runs' encryptions into 1e-3.
HOMOMORPHIC = 'optimizer = "sgd"\nlr = 0.05\n\n[privacy]\nhomomorphic = true\n'


def homomorphic_certs(folder: Path) -> Path:
    make_certs(folder)
    for name in ("server", *SITES):
        certs.issue_context(folder, name)
    return folder


def test_a_homomorphic_federation_adds_ciphertexts_and_gives_the_simulation_model(
        tmp_path: Path, procs: Processes) -> None:
    port = free_port()
    folder = homomorphic_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=2, extra=HOMOMORPHIC)
    state = start_server(procs, tmp_path, config, folder, port)
    assert procs.wait("server", 180) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0

    audit = state / "audit.jsonl"
    closed = events(audit, "round_closed")
    assert [e["protection"] for e in closed] == ["homomorphic:all"] * 2, procs.log_text()
    assert all(sorted(e["aggregated"]) == list(SITES) for e in closed), procs.log_text()
    decrypted = events(audit, "he_sum_decrypted")
    assert [sorted(e["answered"]) for e in decrypted] == [list(SITES)] * 2, procs.log_text()
    received = events(audit, "update_received")
    assert all(e["n_samples"] == 1 for e in received)  # the count travels encrypted
    setup = prepare(simulation_config(config))
    outcome = train(setup, "fedavg", setup.federation.sites, "fedavg")
    deployed = load_file(state / "model.safetensors")
    for key, value in outcome.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=0, atol=1e-5)
    model_bytes = sum(v.numel() * v.element_size() for v in deployed.values())
    summary = json.loads((state / "summary.json").read_text())
    assert summary["bytes_up"] > 10 * 2 * 3 * model_bytes  # ciphertexts are ~18x the weights
    assert summary["privacy"]["homomorphic"]["server_holds"].startswith("the public context")


def test_a_server_given_the_secret_context_refuses_to_start(tmp_path: Path, procs: Processes) -> None:
    port = free_port()
    folder = homomorphic_certs(tmp_path / "certs")
    shutil.copy(folder / "site-a.ckks", folder / "server.ckks")  # the mistake: it could decrypt
    config = write_federation(tmp_path / "federation.toml", port, rounds=1, extra=HOMOMORPHIC)
    procs.start("server", "server", "--config", str(config), "--certs", str(folder), "--state",
                str(tmp_path / "state"))
    assert procs.wait("server", 60) == 2
    assert "holds the federation's secret key" in procs.log_text()
