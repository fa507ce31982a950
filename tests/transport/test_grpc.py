"""The gRPC transport in one process: a real gRPC server on 127.0.0.1 and fake sites that answer
with good and bad updates. Bad updates are rejected, recorded, and the round goes on."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import torch

from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions
from medfed.deploy import certs
from medfed.server.round_loop import RoundPlan, RoundResult, SilentObserver, run_rounds
from medfed.transport import chunks
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.grpc_channel import (
    CLIENT_OPTIONS,
    channel_credentials,
    server_credentials,
)
from medfed.transport.grpc_server import METHOD, REPLACED
from medfed.transport.grpc_transport import GrpcTransport
from medfed.transport.proto import medfed_pb2 as pb

Answer = Callable[[pb.Task, bytes], list[pb.SiteMessage]]
INITIAL = {"w": torch.zeros(3), "b": torch.zeros(2, 2)}


def result(task: pb.Task, blob: bytes, meta: dict | None = None, size: int | None = None
           ) -> list[pb.SiteMessage]:
    meta = meta if meta is not None else {"n_samples": 10, "n_steps": 1, "metrics": {"train_loss": 0.5}}
    head = pb.Result(task_id=task.task_id, meta_json=json.dumps(meta),
                     size=len(blob) if size is None else size)
    return [pb.SiteMessage(result=head)] + [
        pb.SiteMessage(chunk=pb.Chunk(task_id=task.task_id, data=bytes(c))) for c in chunks.split(blob)]


def changed(blob: bytes, **replace: torch.Tensor) -> bytes:
    state = {k: v + 1 for k, v in decode_state(blob).items()}
    return encode_state({**state, **replace})


ANSWERS: dict[str, Answer] = {
    "good": lambda task, blob: result(task, changed(blob)),
    "malformed": lambda task, blob: result(task, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"),
    "oversized": lambda task, blob: result(task, b"", size=len(blob) + (64 << 20)),
    "nan": lambda task, blob: result(task, changed(blob, w=torch.tensor([0.0, float("nan"), 1.0]))),
    "shape": lambda task, blob: result(task, changed(blob, w=torch.zeros(4))),
    "no-samples": lambda task, blob: result(task, changed(blob), meta={"n_samples": 0, "n_steps": 1}),
    "huge-message": lambda task, blob: [pb.SiteMessage(chunk=pb.Chunk(task_id=task.task_id,
                                                                      data=b"x" * (5 << 20)))],
}


class FakeSite:
    """A site that dials in and answers every task with answer(task, model bytes)."""

    def __init__(self, channel: grpc.Channel, site: str, answer: Answer, delay: float = 0.0,
                 schema: dict | None = None) -> None:
        self.channel, self.site, self.answer, self.delay = channel, site, answer, delay
        self.schema = schema  # the task schema its hello reports (a deployed server checks it)
        self.outbox: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.goodbyes: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _requests(self) -> Iterator[pb.SiteMessage]:
        info = {"site": self.site, **({"schema": self.schema} if self.schema else {})}
        hello = pb.SiteMessage(hello=pb.Hello(info_json=json.dumps(info)))
        yield hello
        yield hello  # the second hello says the site is ready to train
        while (message := self.outbox.get()) is not None:
            yield message

    def _run(self) -> None:
        call = self.channel.stream_stream(METHOD, request_serializer=pb.SiteMessage.SerializeToString,
                                          response_deserializer=pb.ServerMessage.FromString)
        task, parts = None, []
        try:
            for message in call(self._requests()):
                kind = message.WhichOneof("body")
                if kind == "goodbye":
                    self.goodbyes.append(message.goodbye.reason)
                    return
                if kind == "task":
                    task, parts = message.task, []
                elif kind == "chunk":
                    parts.append(message.chunk.data)
                if task is not None and sum(map(len, parts)) == task.size and kind != "welcome":
                    time.sleep(self.delay)
                    for reply in self.answer(task, b"".join(parts)):
                        self.outbox.put(reply)
                    task = None
        except grpc.RpcError as exc:
            self.error = exc

    def stop(self) -> None:
        self.outbox.put(None)
        self.channel.close()
        self.thread.join(5)


class Rounds(SilentObserver):
    def __init__(self, transport: GrpcTransport) -> None:
        self.transport = transport

    def round_started(self, round_index: int, sites: list[str]) -> None:
        self.transport.begin_round(round_index)


def test_bad_updates_are_rejected_recorded_and_the_round_goes_on(serve):
    sites = [*ANSWERS, "late", "absent"]
    registry, port, audit = serve(sites)
    fakes = [FakeSite(grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS), site,
                      ANSWERS.get(site, ANSWERS["good"]), delay=1.5 if site == "late" else 0.0)
             for site in sites if site != "absent"]
    try:
        assert registry.wait_for(len(sites) - 1, timeout=10)
        transport = GrpcTransport(registry, round_seconds=1.0, eval_seconds=1.0)
        strategy = FedAvg(dict(INITIAL))
        history: list[RoundResult] = run_rounds(
            strategy, transport, sites, RoundPlan(rounds=2, min_sites=1, eval_every=0),
            TrainOptions(), np.random.default_rng(0), Rounds(transport))
    finally:
        for fake in fakes:
            fake.stop()
    first = history[0]
    assert first.sites == ["good"]
    why = first.failed
    assert "not a valid safetensors" in why["malformed"]
    assert "over the limit" in why["oversized"]
    assert "NaN" in why["nan"] and "shape" in why["shape"] and "sample count" in why["no-samples"]
    assert "huge-message" in why and "missed the round's deadline" in why["late"]
    assert "not connected" in why["absent"]
    assert history[1].sites == ["good"]  # the server went on, round after round
    torch.testing.assert_close(strategy.global_state["w"], torch.full((3,), 2.0))
    received = [f for event, f in audit if event == "update_received"]
    assert {f["site"] for f in received} >= {"good", "nan", "shape", "malformed"}
    assert all(len(f["sha256"]) == 64 for f in received)


def _pki(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path)
    certs.issue(tmp_path, "server")
    for name in ("site-a", "site-z"):
        certs.issue(tmp_path, name)
    return tmp_path


def test_mutual_tls_lets_in_listed_sites_by_certificate_name_only(serve, tmp_path: Path):
    pki = _pki(tmp_path)
    registry, port, audit = serve(["site-a"], server_credentials(certs.load_identity(pki, "server")))

    def dial(name: str) -> grpc.Channel:
        creds = channel_credentials(certs.load_identity(pki, name))
        return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=CLIENT_OPTIONS)

    stranger = FakeSite(dial("site-z"), "site-z", ANSWERS["good"])
    impostor = FakeSite(dial("site-z"), "site-a", ANSWERS["good"])  # site-z's key, site-a's name
    member = FakeSite(dial("site-a"), "site-a", ANSWERS["good"])
    try:
        assert registry.wait_for(1, timeout=10)
        stranger.thread.join(5)
        impostor.thread.join(5)
        assert stranger.error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert impostor.error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert registry.connected() == ["site-a"]
    finally:
        for fake in (stranger, impostor, member):
            fake.stop()
    refusals = [f["reason"] for event, f in audit if event == "auth_failed"]
    assert len(refusals) == 2 and all("site-z" in r for r in refusals)


def test_a_model_larger_than_the_message_limit_travels_both_ways(serve):
    registry, port, _ = serve(["site-a"])
    site = FakeSite(grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS), "site-a",
                    ANSWERS["good"])
    big = {"w": torch.arange(3 << 20, dtype=torch.float32)}  # 12 MiB, three times the limit
    try:
        assert registry.wait_for(1, timeout=10)
        transport = GrpcTransport(registry, round_seconds=30, eval_seconds=30)
        update = transport.train("site-a", big, TrainOptions())
    finally:
        site.stop()
    assert transport.bytes_down > 3 * chunks.MESSAGE_LIMIT
    torch.testing.assert_close(update.state["w"], big["w"] + 1)


def test_a_newer_connection_of_a_site_replaces_the_older_which_is_told_why(serve):
    registry, port, audit = serve(["site-a"])
    goodbyes: list[str] = []

    def dial() -> FakeSite:
        return FakeSite(grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS), "site-a",
                        ANSWERS["good"])

    first = dial()
    try:
        assert registry.wait_for(1, timeout=10)
        older = registry.get("site-a")
        second = dial()
        deadline = time.monotonic() + 10
        while registry.get("site-a") is older and time.monotonic() < deadline:
            time.sleep(0.02)
        first.thread.join(5)
        goodbyes = first.goodbyes
    finally:
        first.stop()
        second.stop()
    assert older.closed.is_set() and registry.get("site-a") is not older
    assert goodbyes == [REPLACED]
    assert [e for e, _ in audit].count("site_connected") == 2
