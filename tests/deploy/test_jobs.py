"""A long-running coordinator and site agents on 127.0.0.1 (mutual TLS): an administrator submits
experiments as jobs; they run one after another while the three site agents stay up; a job
aborted mid-round stops and the next one runs. Only an administrator's certificate may manage
jobs. Real processes, bounded waits; the procs fixture cleans up."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from medfed.cli import main
from medfed.deploy import certs as certificates
from medfed.deploy.admin import METHOD, call_admin
from medfed.deploy.certs import load_identity
from medfed.errors import ConfigError
from medfed.transport.grpc_channel import CLIENT_OPTIONS, channel_credentials
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


def submit(port: int, certs: Path, path: Path) -> int:
    return call_admin(f"127.0.0.1:{port}", certs, "alice",
                      {"op": "submit", "config": path.read_text(), "name": path.stem})["job"]


def status(port: int, certs: Path, job: int) -> str:
    return call_admin(f"127.0.0.1:{port}", certs, "alice", {"op": "status", "job": job})["status"]


def test_jobs_run_one_after_another_on_site_agents_that_stay_up_and_abort_stops_one(
        tmp_path: Path, procs: Processes, capsys: pytest.CaptureFixture):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    certificates.issue(certs, "admin.alice")
    state = tmp_path / "coordinator"
    procs.start("coordinator", "server", "--certs", str(certs), "--state", str(state),
                "--address", f"127.0.0.1:{port}")
    agents = {}
    for site in SITES:
        config = write_site_config(tmp_path / "sites" / f"{site}.toml", site)
        agents[site] = procs.start(site, "client", "--server", f"127.0.0.1:{port}", "--site", site,
                                   "--certs", str(certs), "--max-backoff", "1",
                                   "--site-config", str(config))
    wait_until(lambda: (state / "coordinator" / "audit.jsonl").exists(), 60, "the coordinator",
               procs)

    first = submit(port, certs, write_federation(tmp_path / "one.toml", port, rounds=1))
    second = submit(port, certs, write_federation(tmp_path / "two.toml", port, rounds=2))
    wait_until(lambda: status(port, certs, second) == "done", 180, "two jobs", procs)
    assert status(port, certs, first) == "done"
    for job, rounds in ((first, 1), (second, 2)):
        summary = json.loads((state / "jobs" / str(job) / "summary.json").read_text())
        assert summary["rounds"] == rounds and set(summary["evaluation"]["sites"]) == set(SITES)
    assert all(agent.poll() is None for agent in agents.values())  # no site restarted

    long = write_federation(tmp_path / "long.toml", port, rounds=40)
    aborted = submit(port, certs, long)
    audit = state / "jobs" / str(aborted) / "audit.jsonl"
    wait_until(lambda: len(events(audit, "round_closed")) >= 1, 120, "the long job's round 1", procs)
    assert call_admin(f"127.0.0.1:{port}", certs, "alice",
                      {"op": "abort", "job": aborted})["status"] == "aborting"
    wait_until(lambda: status(port, certs, aborted) == "aborted", 60, "the abort", procs)
    last = submit(port, certs, write_federation(tmp_path / "last.toml", port, rounds=1))
    wait_until(lambda: status(port, certs, last) == "done", 120, "the job after the abort", procs)
    assert all(agent.poll() is None for agent in agents.values())

    capsys.readouterr()
    assert main(["job", "list", "--server", f"127.0.0.1:{port}", "--certs", str(certs),
                 "--admin", "alice"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("done") == 3 and "aborted" in listed
    kinds = {e["event"] for e in events(state / "coordinator" / "audit.jsonl")}
    assert {"job_submitted", "job_started", "job_ended", "job_abort_requested"} <= kinds

    # A site's certificate cannot manage jobs; a job with a bad file is one clear line.
    site = load_identity(certs, "site-a")
    with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(site),
                             options=CLIENT_OPTIONS) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(METHOD)(b'{"op": "list"}', timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    bad = tmp_path / "bad.toml"
    bad.write_text('[deployment]\nsites = ["site-a"]\n')
    with pytest.raises(ConfigError, match="no \\[task\\] table"):
        submit(port, certs, bad)
