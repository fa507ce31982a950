"""A protocol fuzzer: a hostile site with a valid certificate against a real `medfed server`.

    python benchmarks/fuzz_protocol.py --messages 100000 --out /tmp/fuzz
    python benchmarks/fuzz_protocol.py --split --messages 20000  # and hostile Split calls

It starts, on 127.0.0.1, a `medfed server` process (two sites, plain FedAvg on tiny synthetic
data, many short rounds) and one honest `medfed client` (site-a), then connects as site-b with
site-b's own certificate and sends `--messages` random and mutated messages on its Session stream:
random bytes, truncated and bit-flipped valid protobufs, valid protobufs with hostile JSON,
huge announced sizes, chunks out of order or longer than announced, task ids never issued, and
hostile answers to every task the server hands it (train, evaluate, final). When its stream is
closed it reconnects (with a hostile or a valid hello). With `--secure` the federation runs secure
aggregation with a second honest site (site-c), so the attacker is also handed every secure
aggregation step (advertise, share, receive, consistency, unmask) and answers each with hostile
JSON shaped like the step's answer. With `--split` the federation runs split learning (site-a
opted in by its policy) and the attacker also calls the Split service with hostile requests, while
it holds a train task and when it holds none (fuzz_split.py says which); a hostile call answered
OK is counted in `split.accepted`. It counts:

- server exits while fuzzing (must be 0),
- hangs: after the fuzzing, the honest site must complete a round (a `round_closed` that
  aggregated site-a) within --settle seconds,
- the server's resident memory (VmRSS) before and after (target: growth < 50 MB),
- with --split: the reply codes per kind of Split call, hostile calls accepted (must be none), and
  the honest site's rounds that failed in split learning (must be none).

It prints one JSON report and exits 1 when a server exited or hung, or a hostile Split call was
accepted. Every process it starts is killed at the end. The Session stream's messages are made in
fuzz_session.py, the Split calls in fuzz_split.py. A bounded run is a test
(tests/deploy/test_fuzz_protocol.py).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuzz_session import Attacker  # this folder
from fuzz_split import Cut, SplitCaller, SplitTally

from medfed.deploy import certs
from medfed.deploy.certs import load_identity
from medfed.transport.grpc_channel import channel_credentials

MODES = ("plain", "secure", "split")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Report:
    messages: int = 0
    sessions: int = 0
    refused_connects: int = 0
    tasks_answered: dict[str, int] = field(default_factory=dict)
    server_exits: int = 0
    hang: bool = False
    honest_rounds_after: int = 0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_growth_mb: float = 0.0
    seconds: float = 0.0
    split: SplitTally | None = None  # --split: the Split calls and their replies
    honest_split_failures: int = 0  # --split: site-a's train tasks rejected in split learning


def federation_file(folder: Path, port: int, mode: str = "plain") -> Path:
    """The federation: two sites (three with --secure), many short rounds on tiny data; --split
    cuts the cnn (10 blocks) after its first 2 and before its last."""
    path = folder / "federation.toml"
    secure = mode == "secure"
    sites = '["site-a", "site-b", "site-c"]' if secure else '["site-a", "site-b"]'
    privacy = "[privacy]\nsecure_aggregation = true\n" if secure else ""
    algorithm = 'algorithm = "split"\ncut = "2,1"' if mode == "split" else 'algorithm = "fedavg"'
    model = '[model]\nmodel = "cnn"\n' if mode == "split" else ""
    path.write_text(f"""seed = 0
device = "cpu"
baselines = false
[task]
kind = "binary"
classes = ["normal", "finding"]
spatial_dims = 2
channels = 1
image_size = 16
{model}[federation]
{algorithm}
rounds = 100000
min_sites = 1
[training]
local_epochs = 1
batch_size = 32
{privacy}[deployment]
address = "127.0.0.1:{port}"
sites = {sites}
min_sites_to_start = {2 if secure else 1}
round_deadline = 5.0
eval_deadline = 5.0
start_timeout = 120.0
round_retries = 100000
""")
    return path


def site_file(folder: Path, site: str = "site-a", sites: int = 2, split: bool = False) -> Path:
    """An honest site's SITE.toml; in split learning it opts in (its [policy])."""
    path = folder / f"{site}.toml"
    policy = "[policy]\nallow_split_learning = true\n" if split else ""
    path.write_text(f"""site = "{site}"
state = "{folder / ('state-' + site)}"
seed = 0
[data]
dataset = "synthetic"
sites = {sites}
synthetic_samples = 60
synthetic_test = 20
image_size = 16
{policy}""")
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fuzz(messages: int, folder: Path, seed: int = 0, settle: float = 120.0, mode: str = "plain"
         ) -> Report:
    """mode: one of MODES (the federation site-b attacks)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    report, rng = Report(), random.Random(seed)
    started = time.monotonic()
    port, pki, state = _free_port(), folder / "certs", folder / "state"
    audit = state / "audit.jsonl"
    config = federation_file(folder, port, mode)
    procs = _start(folder, port, config, mode, pki, state)
    server, split = procs[0], None
    try:
        _wait_rounds(audit, 1, 180, server)  # the honest site's first round
        report.rss_before_mb = rss_mb(server.pid)
        credentials = channel_credentials(load_identity(pki, "site-b"))
        address = f"127.0.0.1:{port}"
        if mode == "split":
            split = SplitCaller(address, credentials, rng, Cut.of_federation(config))
        _attack(Attacker(address, credentials, rng, split), messages, report, server)
        _settle(report, audit, settle, server)
    finally:
        if split is not None:
            split.close()
            report.split = split.tally
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
    if mode == "split":
        report.honest_split_failures = sum(
            e.get("event") == "update_rejected" and e.get("site") == "site-a"
            and "split learning" in str(e.get("reason")) for e in _audit(audit))
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _start(folder: Path, port: int, config: Path, mode: str, pki: Path, state: Path
           ) -> list[subprocess.Popen]:
    """The server (first) and the honest sites' clients, each logging to folder/NAME.log."""
    honest_sites = ("site-a", "site-c") if mode == "secure" else ("site-a",)
    certs.init_ca(pki)
    for name in ("server", "site-b", *honest_sites):
        certs.issue(pki, name)
    commands = {"server": ["server", "--config", str(config), "--certs", str(pki), "--state",
                           str(state)]}
    for site in honest_sites:
        site_config = site_file(folder, site, len(honest_sites) + 1, split=mode == "split")
        commands[site] = ["client", "--server", f"127.0.0.1:{port}", "--certs", str(pki),
                          "--site-config", str(site_config), "--max-backoff", "1"]
    procs = []
    for name, args in commands.items():
        with open(folder / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            procs.append(subprocess.Popen([sys.executable, "-m", "medfed", *args], stdout=log,
                                          stderr=subprocess.STDOUT, env=ENV))
    return procs


def _settle(report: Report, audit: Path, settle: float, server: subprocess.Popen) -> None:
    """After the attack: did the server stay up, does the honest site still close rounds, and
    how much memory did the server gain."""
    closed = _rounds_with_site_a(audit)
    report.server_exits = int(server.poll() is not None)
    try:
        report.honest_rounds_after = _wait_rounds(audit, closed + 1, settle, server) - closed
    except TimeoutError:
        report.hang = True
    report.server_exits = int(server.poll() is not None)
    if not report.server_exits:
        report.rss_after_mb = rss_mb(server.pid)
        report.rss_growth_mb = round(report.rss_after_mb - report.rss_before_mb, 1)


def _attack(attacker: Attacker, messages: int, report: Report, server: subprocess.Popen) -> None:
    while report.messages < messages and server.poll() is None:
        channel, out, reader = attacker.open(hostile_hello=report.sessions % 5 == 4)
        report.sessions += 1
        budget = report.messages + attacker.rng.randint(200, 3000)  # then it reconnects
        while report.messages < min(messages, budget) and reader.is_alive():
            blob = attacker.message(report.tasks_answered)
            try:
                if blob is not None:  # None: a Split call was made instead
                    out.put(blob, timeout=1)
                report.messages += 1
            except queue.Full:
                continue
        try:
            out.put_nowait(None)
        except queue.Full:
            pass
        channel.close()
        if report.sessions % 20 == 0:  # the server allows 20 new streams a minute per site
            report.refused_connects += 1
            time.sleep(3)


def _audit(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    records = []
    for line in audit.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _rounds_with_site_a(audit: Path) -> int:
    return sum(r.get("event") == "round_closed" and "site-a" in r.get("aggregated", [])
               for r in _audit(audit))


def _wait_rounds(audit: Path, count: int, timeout: float, server: subprocess.Popen) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        done = _rounds_with_site_a(audit)
        if done >= count:
            return done
        time.sleep(0.2)
    raise TimeoutError(f"no round with the honest site within {timeout} s")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settle", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=None, help="keep logs and state here")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--secure", action="store_true", help="a secure-aggregation federation "
                       "with a second honest site: the attacker also answers every secagg step")
    modes.add_argument("--split", action="store_true", help="a split-learning federation: the "
                       "attacker also makes hostile Split.Forward / Split.Backward calls")
    args = parser.parse_args()
    mode = "secure" if args.secure else "split" if args.split else "plain"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = fuzz(args.messages, args.out, args.seed, args.settle, mode)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = fuzz(args.messages, Path(tmp), args.seed, args.settle, mode)
    print(json.dumps(asdict(report), indent=1))
    accepted = report.split is not None and report.split.accepted
    sys.exit(1 if report.server_exits or report.hang or accepted else 0)


if __name__ == "__main__":
    main()
