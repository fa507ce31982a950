"""A protocol fuzzer: a hostile site with a valid certificate against a real `medfed server`.

    python benchmarks/fuzz_protocol.py --messages 100000 --out /tmp/fuzz

It starts, on 127.0.0.1, a `medfed server` process (two sites, plain FedAvg on tiny synthetic
data, many short rounds) and one honest `medfed client` (site-a), then connects as site-b with
site-b's own certificate and sends `--messages` random and mutated messages on its Session stream:
random bytes, truncated and bit-flipped valid protobufs, valid protobufs with hostile JSON,
huge announced sizes, chunks out of order or longer than announced, task ids never issued, and
hostile answers to every task the server hands it (train, evaluate, final). When its stream is
closed it reconnects (with a hostile or a valid hello). With `--secure` the federation runs secure
aggregation with a second honest site (site-c), so the attacker is also handed every secure
aggregation step (advertise, share, receive, consistency, unmask) and answers each with hostile
JSON shaped like the step's answer. It counts:

- server exits while fuzzing (must be 0),
- hangs: after the fuzzing, the honest site must complete a round (a `round_closed` that
  aggregated site-a) within --settle seconds,
- the server's resident memory (VmRSS) before and after (target: growth < 50 MB).

It prints one JSON report and exits 1 when a server exited or hung. Every process it starts is
killed at the end. A bounded run is a test (tests/deploy/test_fuzz_protocol.py).
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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from medfed.deploy import certs
from medfed.deploy.certs import load_identity
from medfed.transport.grpc_channel import CLIENT_OPTIONS, channel_credentials
from medfed.transport.grpc_server import METHOD
from medfed.transport.proto import medfed_pb2 as pb

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TASK = {"kind": "binary", "classes": ["normal", "finding"], "spatial_dims": 2, "channels": 1,
        "image_size": 16, "harmonize": "none"}
HOSTILE_JSON = ["[]", "{oops", "null", "1e999", '"text"', "[" * 50_000, '{"a":' * 20_000,
                json.dumps({"n_samples": 2**64}), json.dumps({"n_samples": -1}),
                json.dumps({"n_samples": 10**12, "n_steps": 10**30}),
                json.dumps({"n_samples": 10, "metrics": {"auc": 10**400}}),
                json.dumps({"n_samples": 10, "metrics": [1, 2]}),
                json.dumps({"metrics": {str(i): i for i in range(1000)}}),
                json.dumps({"withheld": "x" * 5000}), json.dumps({"n_samples": True}),
                '{"n_samples": 10, "metrics": {"auc": NaN}}']


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


SECAGG_ANSWERS = [json.dumps(x) for x in (
    {"advert": None}, {"advert": {"site": "site-a", "c_pk": "00", "s_pk": "zz"}},
    # well-formed, so it passes the server's parsing, but signed by nobody: the honest sites
    # would refuse a key book holding it, so the server must drop it first
    {"advert": {"site": "site-b", "cipher_key": "QUFBQQ==", "mask_key": "QUFBQQ==",
                "certificate": "not a certificate", "signature": "QUFBQQ=="}},
    {"advert": {"site": "site-b", "c_pk": "A" * 100_000, "signature": 7}},
    {"shares": "all"}, {"shares": [{"sender": "site-b", "receiver": "site-a", "ct": "!!"}] * 500},
    {"shares": [None] * 10_000}, {"signature": {"site": "site-a"}}, {"signature": "x" * 5000},
    {"response": {"b_shares": {"site-a": [1, 2]}, "s_shares": "no"}}, {"response": []})]


def federation_file(folder: Path, port: int, secure: bool = False) -> Path:
    path = folder / "federation.toml"
    sites = '["site-a", "site-b", "site-c"]' if secure else '["site-a", "site-b"]'
    privacy = "[privacy]\nsecure_aggregation = true\n" if secure else ""
    path.write_text(f"""seed = 0
device = "cpu"
baselines = false
[task]
kind = "binary"
classes = ["normal", "finding"]
spatial_dims = 2
channels = 1
image_size = 16
[federation]
algorithm = "fedavg"
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


def site_file(folder: Path, site: str = "site-a", sites: int = 2) -> Path:
    path = folder / f"{site}.toml"
    path.write_text(f"""site = "{site}"
state = "{folder / ('state-' + site)}"
seed = 0
[data]
dataset = "synthetic"
sites = {sites}
synthetic_samples = 60
synthetic_test = 20
image_size = 16
""")
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Attacker:
    """Site-b's stream: raw bytes out (anything), tasks in."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials, rng: random.Random
                 ) -> None:
        self.address, self.credentials, self.rng = address, credentials, rng
        self.tasks: queue.Queue = queue.Queue()
        self.issued: list[int] = []

    def open(self, hostile_hello: bool) -> tuple[grpc.Channel, queue.Queue, threading.Thread]:
        channel = grpc.secure_channel(self.address, self.credentials, options=CLIENT_OPTIONS)
        call = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                     response_deserializer=pb.ServerMessage.FromString)
        out: queue.Queue = queue.Queue(maxsize=64)
        out.put(self._hello(hostile_hello))
        out.put(_hello({"site": "site-b", "schema": TASK, "n_train": 100}))
        responses = call(iter(out.get, None), timeout=3600)
        reader = threading.Thread(target=self._read, args=(responses,), daemon=True)
        reader.start()
        return channel, out, reader

    def _hello(self, hostile: bool) -> bytes:
        if not hostile:
            return _hello({"site": "site-b", "schema": TASK})
        return self.rng.choice([_hello({"site": "x" * 3_000_000}), b"\xff" * 100,
                                _hello({"site": "site-a", "schema": TASK}),
                                pb.SiteMessage(hello=pb.Hello(info_json="[" * 10_000)).SerializeToString(),
                                _hello({"site": "site-b", "schema": {"kind": "nonsense"}})])

    def _read(self, responses) -> None:
        try:
            for message in responses:
                if message.WhichOneof("body") == "task":
                    self.issued.append(message.task.task_id)
                    self.tasks.put(message.task)
        except grpc.RpcError:
            pass

    def message(self, report: Report) -> bytes:
        """One hostile message: an answer to a pending task when there is one, else anything."""
        try:
            task = self.tasks.get_nowait()
        except queue.Empty:
            task = None
        if task is not None:
            report.tasks_answered[task.kind] = report.tasks_answered.get(task.kind, 0) + 1
            if task.kind.startswith("secagg.") and self.rng.random() < 0.7:
                meta = SECAGG_ANSWERS[2] if self.rng.random() < 0.5 else self.rng.choice(SECAGG_ANSWERS)
                return pb.SiteMessage(result=pb.Result(task_id=task.task_id,
                                                       meta_json=meta)).SerializeToString()
            return self._answer(task.task_id)
        task_id = self.rng.choice(self.issued) if self.issued and self.rng.random() < 0.5 \
            else self.rng.randrange(1 << 64)
        return self.rng.choice([self._random, self._mutated, self._answer])(task_id)

    def _random(self, task_id: int) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 1, 7, 100, 5000]))

    def _mutated(self, task_id: int) -> bytes:
        blob = bytearray(self._answer(task_id))
        if blob and self.rng.random() < 0.5:
            del blob[self.rng.randrange(len(blob)):]
        for _ in range(self.rng.randint(1, 4)):
            if blob:
                blob[self.rng.randrange(len(blob))] ^= 1 << self.rng.randrange(8)
        return bytes(blob)

    def _answer(self, task_id: int) -> bytes:
        r = self.rng
        kind = r.randrange(4)
        if kind == 0:  # a header with hostile JSON and a hostile announced size
            size = r.choice([0, 4, 1 << 20, 50 << 20, (1 << 64) - 1])
            return pb.SiteMessage(result=pb.Result(task_id=task_id, meta_json=r.choice(HOSTILE_JSON),
                                                   size=size)).SerializeToString()
        if kind == 1:  # a chunk: out of order, too long, for a task never issued
            data = r.randbytes(r.choice([1, 64, 4096, 1 << 20]))
            return pb.SiteMessage(chunk=pb.Chunk(task_id=task_id, data=data)).SerializeToString()
        if kind == 2:  # a well-formed header with a small body that is no safetensors
            return pb.SiteMessage(result=pb.Result(
                task_id=task_id, meta_json=json.dumps({"n_samples": r.randrange(1, 100)}),
                size=16)).SerializeToString()
        return pb.SiteMessage(result=pb.Result(task_id=task_id, error="e" * r.choice([1, 100_000]))
                              ).SerializeToString()


def _hello(info: dict) -> bytes:
    return pb.SiteMessage(hello=pb.Hello(info_json=json.dumps(info))).SerializeToString()


def fuzz(messages: int, folder: Path, seed: int = 0, settle: float = 120.0, secure: bool = False
         ) -> Report:
    report, rng = Report(), random.Random(seed)
    started = time.monotonic()
    port = _free_port()
    pki = folder / "certs"
    certs.init_ca(pki)
    honest_sites = ("site-a", "site-c") if secure else ("site-a",)
    for name in ("server", "site-b", *honest_sites):
        certs.issue(pki, name)
    state = folder / "state"
    logs = [open(folder / f"{n}.log", "wb") for n in ("server", *honest_sites)]
    server = subprocess.Popen([sys.executable, "-m", "medfed", "server", "--config",
                               str(federation_file(folder, port, secure)), "--certs", str(pki),
                               "--state", str(state)], stdout=logs[0], stderr=subprocess.STDOUT,
                              env=ENV)
    honest = [subprocess.Popen([sys.executable, "-m", "medfed", "client", "--server",
                                f"127.0.0.1:{port}", "--certs", str(pki), "--site-config",
                                str(site_file(folder, site, 3 if secure else 2)), "--max-backoff", "1"],
                               stdout=log, stderr=subprocess.STDOUT, env=ENV)
              for site, log in zip(honest_sites, logs[1:], strict=True)]
    try:
        _wait_rounds(state / "audit.jsonl", 1, 180, server)  # the honest site's first round
        report.rss_before_mb = rss_mb(server.pid)
        credentials = channel_credentials(load_identity(pki, "site-b"))
        _attack(Attacker(f"127.0.0.1:{port}", credentials, rng), messages, report, server)
        closed = _rounds_with_site_a(state / "audit.jsonl")
        report.server_exits = int(server.poll() is not None)
        try:
            report.honest_rounds_after = _wait_rounds(state / "audit.jsonl", closed + 1, settle,
                                                      server) - closed
        except TimeoutError:
            report.hang = True
        report.server_exits = int(server.poll() is not None)
        if not report.server_exits:
            report.rss_after_mb = rss_mb(server.pid)
            report.rss_growth_mb = round(report.rss_after_mb - report.rss_before_mb, 1)
    finally:
        for proc in (*honest, server):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for log in logs:
            log.close()
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _attack(attacker: Attacker, messages: int, report: Report, server: subprocess.Popen) -> None:
    while report.messages < messages and server.poll() is None:
        channel, out, reader = attacker.open(hostile_hello=report.sessions % 5 == 4)
        report.sessions += 1
        budget = report.messages + attacker.rng.randint(200, 3000)  # then it reconnects
        while report.messages < min(messages, budget) and reader.is_alive():
            try:
                out.put(attacker.message(report), timeout=1)
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


def _rounds_with_site_a(audit: Path) -> int:
    if not audit.exists():
        return 0
    count = 0
    for line in audit.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        count += record.get("event") == "round_closed" and "site-a" in record.get("aggregated", [])
    return count


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
    parser.add_argument("--secure", action="store_true", help="a secure-aggregation federation "
                        "with a second honest site: the attacker also answers every secagg step")
    args = parser.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = fuzz(args.messages, args.out, args.seed, args.settle, args.secure)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = fuzz(args.messages, Path(tmp), args.seed, args.settle, args.secure)
    print(json.dumps(asdict(report), indent=1))
    sys.exit(1 if report.server_exits or report.hang else 0)


if __name__ == "__main__":
    main()
