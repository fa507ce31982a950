"""What the deployment's transport (gRPC + mutual TLS, chunked safetensors) costs.

    .venv/bin/python benchmarks/transport.py overhead [--sites 3] [--rounds 4] [--runs 1]
    .venv/bin/python benchmarks/transport.py throughput [--repeats 5]
    .venv/bin/python benchmarks/transport.py secure [--sites 3] [--rounds 4] [--runs 1]

overhead: the same FedAvg workload (the built-in synthetic data, the default CNN, 1 local epoch,
validation on every site every round, no baselines) run twice: in simulation (medfed.experiment.train,
in-process transport, one process, sites one after another) and deployed (`medfed server` and one
`medfed client` process per site on 127.0.0.1, mutual TLS). Compared: the median round time as the
round loop measures it (RoundResult.seconds: dispatch, local training, transfers, validation);
with --runs N, N alternating pairs and the ratio of the medians of their medians. Every
process runs one torch thread. The deployed sites train in parallel on their own processes, so with
several sites on a machine with several cores the deployment may be faster than the simulation;
--sites 1 isolates the transport's cost.

secure: the same workload deployed twice, plain and with secure aggregation (`[privacy]
secure_aggregation = true`, the default threshold), alternating --runs times: the median round
time of each, and the ratio secure / plain of the medians of their medians.

throughput: a ResNet-18 state (medfed's 2D resnet18, about 45 MB of float32) sent by the server to
one site process over mutual TLS on loopback and sent back (the site echoes the bytes as its
update): MB/s = 2 x size / round-trip time, median over --repeats; includes safetensors encoding on
the server and decoding of the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import torch

from medfed.client.trainer import TrainOptions
from medfed.config_file import config_from_dict
from medfed.deploy import certs
from medfed.experiment import prepare, train
from medfed.models import ModelSpec, build_model
from medfed.transport import chunks
from medfed.transport.codec import encode_state
from medfed.transport.grpc_channel import (
    CLIENT_OPTIONS,
    SERVER_OPTIONS,
    channel_credentials,
    server_credentials,
)
from medfed.transport.grpc_server import METHOD, FederationServicer, SiteRegistry
from medfed.transport.grpc_transport import GrpcTransport
from medfed.transport.proto import medfed_pb2 as pb

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SITE_NAMES = ("site-a", "site-b", "site-c", "site-d", "site-e")


def workload(sites: int, rounds: int) -> dict:
    return {"seed": 0, "device": "cpu", "baselines": False, "data": {"sites": sites},
            "federation": {"rounds": rounds, "min_sites": sites}}


def simulated_rounds(raw: dict) -> list[float]:
    torch.set_num_threads(1)
    setup = prepare(config_from_dict(raw))
    return [r.seconds for r in train(setup, "fedavg", setup.federation.sites, "fedavg").history]


def deployed_rounds(raw: dict, folder: Path, port: int) -> list[float]:
    pki = folder / "certs"
    certs.init_ca(pki)
    certs.issue(pki, "server")
    names = SITE_NAMES[:raw["data"]["sites"]]
    for name in names:
        certs.issue(pki, name)
    lines = [f"{k} = {json.dumps(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for table, values in raw.items():
        if isinstance(values, dict):
            lines += [f"[{table}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += ["[deployment]", f'address = "127.0.0.1:{port}"']
    (folder / "federation.toml").write_text("\n".join(lines) + "\n")
    medfed = [sys.executable, "-m", "medfed"]
    procs = [subprocess.Popen([*medfed, "server", "--config", str(folder / "federation.toml"),
                               "--certs", str(pki), "--state", str(folder / "state")], env=ENV,
                              stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen([*medfed, "client", "--server", f"127.0.0.1:{port}", "--site", name,
                                "--certs", str(pki), "--max-backoff", "1"], env=ENV,
                               stderr=subprocess.DEVNULL) for name in names]
    try:
        if procs[0].wait(1800) != 0:
            raise SystemExit("the deployed run failed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    rounds = (folder / "state" / "rounds.jsonl").read_text().splitlines()
    return [json.loads(line)["seconds"] for line in rounds]


def overhead(args: argparse.Namespace) -> dict:
    """--runs pairs, simulation and deployment alternating; each run's median round time."""
    raw = workload(args.sites, args.rounds)
    sims, deps = [], []
    for _ in range(args.runs):
        sims.append(statistics.median(simulated_rounds(raw)))
        with tempfile.TemporaryDirectory() as tmp:
            deps.append(statistics.median(deployed_rounds(raw, Path(tmp), args.port)))
    sim_median, dep_median = statistics.median(sims), statistics.median(deps)
    return {"sites": args.sites, "rounds": args.rounds,
            "simulation_median_per_run": [round(s, 3) for s in sims],
            "deployment_median_per_run": [round(s, 3) for s in deps],
            "ratio_per_run": [round(d / s, 3) for s, d in zip(sims, deps, strict=True)],
            "ratio": round(dep_median / sim_median, 3)}


def echo_site(port: int, folder: Path) -> None:
    """The throughput benchmark's site: sends every model it receives back as its update."""
    identity = certs.load_identity(folder, "site-a")
    channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(identity),
                                  options=CLIENT_OPTIONS)
    call = channel.stream_stream(METHOD, request_serializer=pb.SiteMessage.SerializeToString,
                                 response_deserializer=pb.ServerMessage.FromString)
    import queue

    outbox: queue.Queue = queue.Queue()
    for _ in range(2):  # the second hello says the site is ready
        outbox.put(pb.SiteMessage(hello=pb.Hello(info_json='{"site": "site-a"}')))
    parts: list[bytes] = []
    task = None
    for message in call(iter(outbox.get, None)):
        kind = message.WhichOneof("body")
        if kind == "goodbye":
            break
        if kind == "task":
            task, parts = message.task, []
        elif kind == "chunk":
            parts.append(message.chunk.data)
        if task is not None and sum(map(len, parts)) == task.size:
            blob = b"".join(parts)
            outbox.put(pb.SiteMessage(result=pb.Result(task_id=task.task_id, size=len(blob),
                                                       meta_json='{"n_samples": 1, "n_steps": 1}')))
            for piece in chunks.split(blob):
                outbox.put(pb.SiteMessage(chunk=pb.Chunk(task_id=task.task_id, data=bytes(piece))))
            task = None
    outbox.put(None)


def throughput(args: argparse.Namespace) -> dict:
    state = build_model("resnet18", ModelSpec(2, 1, 2, "batch", (28, 28)), 0).state_dict()
    size = len(encode_state(state))
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        certs.init_ca(pki)
        certs.issue(pki, "server")
        certs.issue(pki, "site-a")
        registry = SiteRegistry(["site-a"], lambda event, **fields: None)
        server = grpc.server(ThreadPoolExecutor(8), options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((FederationServicer(registry, pb.Welcome()).handler(),))
        port = server.add_secure_port("127.0.0.1:0",
                                      server_credentials(certs.load_identity(pki, "server")))
        server.start()
        site = subprocess.Popen([sys.executable, __file__, "_echo", str(port), str(pki)], env=ENV)
        try:
            if not registry.wait_for(1, 60):
                raise SystemExit("the echo site did not connect")
            transport = GrpcTransport(registry, round_seconds=300, eval_seconds=300)
            times = []
            for _ in range(args.repeats):
                state = {k: v.clone() for k, v in state.items()}  # a new model: encoded again
                transport.begin_round(0)
                start = time.perf_counter()
                transport.train("site-a", state, TrainOptions())
                times.append(time.perf_counter() - start)
            transport.finish("done")
        finally:
            site.wait(30) if site.poll() is None else None
            server.stop(0)
    best, median = min(times), statistics.median(times)
    megabytes = size / 1e6
    return {"state_mb": round(megabytes, 1), "round_trip_seconds": [round(t, 3) for t in times],
            "mb_per_s_median": round(2 * megabytes / median, 1),
            "mb_per_s_best": round(2 * megabytes / best, 1)}


def secure(args: argparse.Namespace) -> dict:
    """--runs pairs of deployed runs, plain and secure aggregation alternating."""
    raw = workload(args.sites, args.rounds)
    masked = {**raw, "privacy": {"secure_aggregation": True}}
    plains, secures = [], []
    for _ in range(args.runs):
        for config, out in ((raw, plains), (masked, secures)):
            with tempfile.TemporaryDirectory() as tmp:
                out.append(statistics.median(deployed_rounds(config, Path(tmp), args.port)))
    return {"sites": args.sites, "rounds": args.rounds,
            "plain_median_per_run": [round(s, 3) for s in plains],
            "secure_median_per_run": [round(s, 3) for s in secures],
            "ratio_per_run": [round(b / a, 3) for a, b in zip(plains, secures, strict=True)],
            "ratio": round(statistics.median(secures) / statistics.median(plains), 3)}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_echo":
        return echo_site(int(sys.argv[2]), Path(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["overhead", "throughput", "secure"])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="throughput: round trips")
    parser.add_argument("--runs", type=int, default=1, help="overhead: alternating pairs of runs")
    parser.add_argument("--port", type=int, default=50961)
    args = parser.parse_args()
    run = {"overhead": overhead, "throughput": throughput, "secure": secure}[args.what]
    print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()
