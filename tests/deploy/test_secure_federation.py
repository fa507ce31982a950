"""Secure aggregation in the deployment, end to end on 127.0.0.1 with mutual TLS: `medfed server`
and three `medfed client` processes, `secure_aggregation = true` and `threshold = 2` in the
federation file. Bounded waits; the procs fixture kills whatever is left."""

from __future__ import annotations

import json
import signal
import sqlite3
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
    wait_until,
    write_federation,
)

SECURE = """
[privacy]
secure_aggregation = true
threshold = 2
"""


def secure_federation(path: Path, port: int, **kwargs) -> Path:
    write_federation(path, port, **kwargs)
    text = path.read_text().replace("[deployment]", SECURE + "\n[deployment]")
    path.write_text(text, encoding="utf-8")
    return path


def start(procs: Processes, tmp_path: Path, config: Path, certs: Path, port: int) -> Path:
    state = tmp_path / "state"
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    for site in SITES:
        procs.client(site, port, certs)
    return state


def test_three_sites_two_secure_rounds_same_model_as_the_simulation(tmp_path: Path, procs: Processes):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = secure_federation(tmp_path / "federation.toml", port, rounds=2)
    state = start(procs, tmp_path, config, certs, port)
    assert procs.wait("server", 120) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0
    audit = state / "audit.jsonl"
    assert [e["round"] for e in events(audit, "round_closed")] == [1, 2]
    masked = events(audit, "masked_input_received")
    assert sorted((e["round"], e["site"]) for e in masked) == [(r, s) for r in (1, 2) for s in SITES]
    assert all(len(e["sha256"]) == 64 for e in masked) and not events(audit, "update_received")
    assert len(events(audit, "secagg_keys_shared")) == 2 and len(events(audit, "unmask_requested")) == 2
    assert all(e["dropped"] == [] for e in events(audit, "unmask_requested"))
    signed = events(audit, "survivors_signed")  # the consistency check, with certificate keys
    assert [(e["round"], e["sites"]) for e in signed] == [(1, list(SITES)), (2, list(SITES))]
    assert all(e["n_samples"] == 1 for e in masked)  # n_k travels masked, never in the clear
    text = audit.read_text()  # nothing secret: no share, no key, no ciphertext
    assert "ciphertext" not in text and "mask_key" not in text and "shares" not in text

    setup = prepare(simulation_config(config))
    simulated = train(setup, "fedavg", setup.federation.sites, "fedavg").strategy.global_state
    deployed = load_file(state / "model.safetensors")
    assert deployed.keys() == simulated.keys()
    for key, value in simulated.items():  # fixed point at 2^24 over 3 sites: ~1e-7 per weight
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5)
    summary = json.loads((state / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["privacy"]["secure_aggregation"]["threshold"] == 2


def test_a_site_killed_after_the_key_exchange_is_unmasked_then_too_few_survivors_fail_the_round(
        tmp_path: Path, procs: Processes):
    """One run, two kills (they share a test to keep the suite fast). Round 1: site-c is killed
    after the key exchange, while it trains: its pairwise masks are removed with the survivors'
    shares and the round closes with site-a and site-b. Round 2: site-b is killed the same way,
    leaving one survivor for t = 2: the round fails with one error and is not checkpointed."""
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = secure_federation(tmp_path / "federation.toml", port, rounds=2, epochs=8, batch=4)
    config.write_text(config.read_text() + "round_retries = 0\n", encoding="utf-8")
    state = start(procs, tmp_path, config, certs, port)
    audit = state / "audit.jsonl"

    def kill_after_key_exchange(site: str, count: int) -> None:
        wait_until(lambda: len(events(audit, "secagg_keys_shared")) >= count, 90,
                   f"key exchange {count}", procs)
        procs.running[site].send_signal(signal.SIGKILL)  # it trains for seconds: no masked input

    kill_after_key_exchange("site-c", 1)
    kill_after_key_exchange("site-b", 2)
    assert procs.wait("server", 120) == 2, procs.log_text()

    closed = events(audit, "round_closed")
    assert [e["round"] for e in closed] == [1] and closed[0]["aggregated"] == ["site-a", "site-b"]
    assert closed[0]["aggregation"] == {"dropped_after_masking": ["site-c"]}
    assert events(audit, "unmask_requested")[0]["dropped"] == ["site-c"]
    assert events(audit, "dropouts_unmasked")[0]["sites"] == ["site-c"]
    assert events(audit, "secagg_keys_shared")[1]["sites"] == ["site-a", "site-b"]

    failed = events(audit, "round_failed")
    assert len(failed) == 1 and failed[0]["round"] == 2
    assert "fewer than the threshold t = 2" in failed[0]["reason"]
    assert len(events(audit, "unmask_requested")) == 1  # round 2 never asked for unmasking
    with sqlite3.connect(state / "medfed.sqlite") as db:  # only round 1 is checkpointed
        assert [r for (r,) in db.execute("SELECT round FROM rounds")] == [0]
    errors = [line for line in (tmp_path / "logs" / "server.log").read_text().splitlines()
              if "error" in line.lower()]
    assert len(errors) == 1 and "threshold t = 2" in errors[0]
