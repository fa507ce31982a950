"""Running medfed server and client processes in tests: on 127.0.0.1, ephemeral ports, every wait
bounded, every process killed at teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from medfed.config import DataConfig, RunConfig
from medfed.deploy import certs
from medfed.deploy.settings import load_federation

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SITES = ("site-a", "site-b", "site-c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(folder: Path, sites: tuple[str, ...] = SITES) -> Path:
    certs.init_ca(folder)
    certs.issue(folder, "server")
    for site in sites:
        certs.issue(folder, site)
    return folder


# The built-in synthetic data, as each site's own configuration holds it (a site keeps its share).
SYNTHETIC_DATA = {"dataset": "synthetic", "sites": 3, "synthetic_samples": 150,
                  "synthetic_test": 40, "image_size": 16}
SYNTHETIC_TASK = """
[task]
kind = "binary"
classes = ["normal", "finding"]
spatial_dims = 2
channels = 1
image_size = 16
"""


def write_federation(path: Path, port: int, rounds: int = 3, epochs: int = 1, batch: int | None = 16,
                     min_sites: int = 2, min_sites_to_start: int = 3, task: str = SYNTHETIC_TASK,
                     sites: tuple[str, ...] = SITES, extra: str = "") -> Path:
    """A federation file: the task, how to learn it, [deployment]; no data. batch None: the
    default batch (DP-SGD refuses [training]'s, it trains with [privacy]'s logical batch)."""
    batch_line = f"batch_size = {batch}" if batch is not None else ""
    path.write_text(f"""
seed = 0
device = "cpu"
baselines = false
{task}
[federation]
algorithm = "fedavg"
rounds = {rounds}
min_sites = {min_sites}

[training]
local_epochs = {epochs}
{batch_line}
{extra}
[deployment]
address = "127.0.0.1:{port}"
sites = {json.dumps(list(sites))}
min_sites_to_start = {min_sites_to_start}
round_deadline = 60.0
eval_deadline = 30.0
start_timeout = 60.0
""", encoding="utf-8")
    return path


def write_site_config(path: Path, site: str, data: dict | None = None, policy: dict | None = None
                      ) -> Path:
    """A site's own SITE.toml (its data: by default its share of the synthetic federation); its
    state folder is state-SITE beside the file."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"site": site, "state": f"state-{site}", "seed": 0, "data": data or SYNTHETIC_DATA,
            "policy": policy or {}}
    path.write_text(tomli_w.dumps(body), encoding="utf-8")
    return path


def simulation_config(federation: Path, data: dict | None = None) -> RunConfig:
    """The same federation in simulation: its run configuration with the sites' data."""
    config = load_federation(federation).config
    return replace(config, data=DataConfig(**(data or SYNTHETIC_DATA)))


class Processes:
    """Started medfed processes, their logs in a folder; kill_all() at teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "medfed", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=ENV)
        self.running[name] = proc
        return proc

    def client(self, name: str, port: int, certs_dir: Path, *extra: str,
               policy: dict | None = None) -> subprocess.Popen:
        """A site's client; without --site-config in extra, on its share of the synthetic data
        with this [policy]."""
        if "--site-config" not in extra:
            config = write_site_config(self.logs.parent / "sites" / f"{name}.toml", name,
                                       policy=policy)
            extra = ("--site-config", str(config), *extra)
        return self.start(name, "client", "--server", f"127.0.0.1:{port}", "--site", name,
                          "--certs", str(certs_dir), "--max-backoff", "1", "--once", *extra)

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.running[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running after {timeout} s\n{self.log_text()}") from None

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.logs.glob("*.log")))

    def kill_all(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def events(audit: Path, kind: str | None = None) -> list[dict]:
    if not audit.exists():
        return []
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    return [e for e in lines if kind is None or e["event"] == kind]


def wait_until(check: Callable[[], bool], timeout: float, what: str, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{procs.log_text()}")


def run_killed_and_resumed(procs: Processes, tmp_path: Path, config: Path, certs: Path, port: int,
                           sites: Sequence[str] = SITES, policy: dict | None = None) -> Path:
    """A federation whose server is SIGKILLed after round 1 and restarted with --resume; the sites'
    clients (with this [policy]) keep running. Returns the state folder once the resumed server
    has exited 0."""
    state = tmp_path / "state"
    audit = state / "audit.jsonl"
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    for site in sites:
        procs.client(site, port, certs, policy=policy)
    wait_until(lambda: len(events(audit, "round_closed")) >= 1, 90, "round 1", procs)
    procs.running["server"].send_signal(signal.SIGKILL)
    procs.wait("server", 10)
    procs.start("server-resumed", "server", "--config", str(config), "--certs", str(certs),
                "--state", str(state), "--resume")
    assert procs.wait("server-resumed", 120) == 0, procs.log_text()
    return state
