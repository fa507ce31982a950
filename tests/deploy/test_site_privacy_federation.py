"""A site's policy and privacy ledger with real processes on 127.0.0.1 (mutual TLS): the site
decides, the coordinator only hears about it.

- A site whose policy requires secure aggregation refuses a plain plan: it says why in one line and
  exits 2, and the coordinator logs and audits the refusal (by the site, with its reason).
- Two DP-SGD federations in a row: each site's epsilon continues from its ledger (the second
  federation reports more than the first), and a site whose policy caps its epsilon refuses to
  train past it, while the others go on.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.deploy.processes import (
    SITES,
    Processes,
    events,
    free_port,
    make_certs,
    wait_until,
    write_federation,
    write_site_config,
)

DP_SGD = "\n[privacy]\ndp_sgd = true\nnoise_multiplier = 1.0\n"


def test_a_site_refuses_a_plan_its_policy_forbids_and_the_server_audits_it(tmp_path: Path,
                                                                           procs: Processes):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, min_sites_to_start=3)
    state = tmp_path / "state"
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    strict = write_site_config(tmp_path / "sites" / "site-a.toml", "site-a",
                               policy={"require_secure_aggregation": True})
    procs.client("site-a", port, certs, "--site-config", str(strict))
    assert procs.wait("site-a", 60) == 2, procs.log_text()
    said = (procs.logs / "site-a.log").read_text()
    assert "requires secure aggregation" in said and "Traceback" not in said
    audit = state / "audit.jsonl"
    wait_until(lambda: events(audit, "site_refused"), 10, "the refusal audited", procs)
    refusal = events(audit, "site_refused")[0]
    assert refusal["site"] == "site-a" and refusal["by"] == "the site"
    assert "requires secure aggregation" in refusal["reason"]
    assert "requires secure aggregation" in (procs.logs / "server.log").read_text()


def run_federation(procs: Processes, tmp_path: Path, name: str, port: int, certs: Path,
                   policies: dict[str, dict]) -> dict:
    config = write_federation(tmp_path / f"{name}.toml", port, rounds=1, extra=DP_SGD, batch=None,
                              min_sites=1)
    state = tmp_path / f"state-{name}"
    procs.start(name, "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    for site in SITES:
        site_config = write_site_config(tmp_path / "sites" / f"{site}.toml", site,
                                        policy=policies.get(site))
        procs.client(f"{name}-{site}", port, certs, "--site", site, "--site-config", str(site_config))
    assert procs.wait(name, 120) == 0, procs.log_text()
    return json.loads((state / "summary.json").read_text())


def test_a_sites_epsilon_continues_across_federations_and_stops_at_its_own_cap(tmp_path: Path,
                                                                               procs: Processes):
    certs = make_certs(tmp_path / "certs")
    first = run_federation(procs, tmp_path, "first", free_port(), certs, {})
    spent = first["privacy"]["epsilon"]
    assert set(spent) == set(SITES) and all(e > 0 for e in spent.values())
    ledger = json.loads((tmp_path / "sites" / "state-site-a" / "privacy-ledger.json").read_text())
    assert ledger["epsilon"] == spent["site-a"]
    cap = {"site-a": {"max_epsilon": spent["site-a"] * 1.1}}
    second = run_federation(procs, tmp_path, "second", free_port(), certs, cap)
    assert second["privacy"]["epsilon"]["site-b"] > spent["site-b"] * 1.2  # continued, not reset
    refused = second["failed_updates"]["1"]["site-a"]
    assert "privacy budget is spent" in refused
