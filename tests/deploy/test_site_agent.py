"""A site agent stays up: three `medfed client` processes (no --once) on 127.0.0.1 serve two
federations in a row, run by two servers one after the other, without restarting; each keeps one
log (terminal and STATE/site.log) and its state folder across them, and stops cleanly on Ctrl-C.
A site whose certificate the server refuses is told so in plain words, not "UNAVAILABLE"."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.deploy.processes import (
    SITES,
    Processes,
    free_port,
    make_certs,
    wait_until,
    write_federation,
    write_site_config,
)


def test_three_site_agents_serve_two_federations_in_a_row_without_restarting(tmp_path: Path,
                                                                              procs: Processes):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    configs = {s: write_site_config(tmp_path / "sites" / f"{s}.toml", s) for s in SITES}
    agents = {s: procs.start(s, "client", "--server", f"127.0.0.1:{port}", "--site", s, "--certs",
                             str(certs), "--max-backoff", "1", "--site-config", str(configs[s]))
              for s in SITES}
    summaries = []
    for job, rounds in (("first", 1), ("second", 2)):
        federation = write_federation(tmp_path / f"{job}.toml", port, rounds=rounds)
        procs.start(job, "server", "--config", str(federation), "--certs", str(certs), "--state",
                    str(tmp_path / f"state-{job}"))
        assert procs.wait(job, 120) == 0, procs.log_text()
        summaries.append(json.loads((tmp_path / f"state-{job}" / "summary.json").read_text()))
        assert all(agent.poll() is None for agent in agents.values()), procs.log_text()
    assert [s["rounds"] for s in summaries] == [1, 2]
    assert all(set(s["evaluation"]["sites"]) == set(SITES) for s in summaries)
    log = tmp_path / "sites" / "state-site-a" / "site.log"
    wait_until(lambda: log.read_text().count("the federation is over") == 2, 30,
               "the second federation's end in site-a's log", procs)
    text = log.read_text()
    assert text.count("joined a federation") == 2 and "round 2: trained" in text
    for agent in agents.values():
        agent.send_signal(signal.SIGINT)
    for site in SITES:
        assert procs.wait(site, 30) == 0


def test_a_site_of_another_authority_hears_it_in_plain_words(tmp_path: Path, procs: Processes):
    """The site's folder holds another federation's authority and its certificate (a consistent
    folder, so the site starts): the TLS handshake fails, and the site says why and stops (2)."""
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    procs.start("server", "server", "--config", str(write_federation(tmp_path / "f.toml", port)),
                "--certs", str(certs), "--state", str(tmp_path / "state"))
    stranger = make_certs(tmp_path / "other", sites=("site-a",))  # another authority's site-a
    procs.client("site-a", port, stranger)
    assert procs.wait("site-a", 90) == 2, procs.log_text()
    said = (procs.logs / "site-a.log").read_text()
    last = [line for line in said.splitlines() if line.startswith("medfed")][-1]
    assert "does not trust the server's certificate" in last and "Traceback" not in said
