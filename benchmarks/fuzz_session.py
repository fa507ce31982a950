"""The protocol fuzzer's Session stream (fuzz_protocol.py): site-b, with its valid certificate,
sending random and mutated messages and hostile answers to every task it is handed; in split
learning it also holds each train task for its hostile Split calls (fuzz_split.py).
"""

from __future__ import annotations

import json
import queue
import random
import threading

import grpc
from fuzz_split import SplitCaller  # this folder

from medfed.transport.grpc_channel import CLIENT_OPTIONS
from medfed.transport.grpc_server import METHOD
from medfed.transport.proto import medfed_pb2 as pb

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


class Attacker:
    """Site-b's stream: raw bytes out (anything), tasks in; with `split`, its Split calls too."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials, rng: random.Random,
                 split: SplitCaller | None = None) -> None:
        self.address, self.credentials, self.rng = address, credentials, rng
        self.tasks: queue.Queue = queue.Queue()
        self.issued: list[int] = []
        self.split = split

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

    def message(self, answered: dict[str, int]) -> bytes | None:
        """One hostile message for the stream: an answer to a pending task when there is one,
        else anything. None: a Split call was made instead (a held train task's, or by chance)."""
        if self.split is not None and self.split.busy():
            done = self.split.call()  # the held train task's calls, then its (hostile) answer
            return self._answer_task(done, answered) if done is not None else None
        try:
            task = self.tasks.get_nowait()
        except queue.Empty:
            task = None
        if task is not None and self.split is not None and task.kind == "train":
            self.split.hold(task)  # its Split calls come first, its answer after them
            return self.message(answered)
        if task is not None:
            return self._answer_task(task, answered)
        if self.split is not None and self.rng.random() < 0.2:
            self.split.call()  # site-b holds no train task: a call naming none of its own
            return None
        task_id = self.rng.choice(self.issued) if self.issued and self.rng.random() < 0.5 \
            else self.rng.randrange(1 << 64)
        return self.rng.choice([self._random, self._mutated, self._answer])(task_id)

    def _answer_task(self, task: pb.Task, answered: dict[str, int]) -> bytes:
        answered[task.kind] = answered.get(task.kind, 0) + 1
        if task.kind.startswith("secagg.") and self.rng.random() < 0.7:
            meta = SECAGG_ANSWERS[2] if self.rng.random() < 0.5 else self.rng.choice(SECAGG_ANSWERS)
            return pb.SiteMessage(result=pb.Result(task_id=task.task_id,
                                                   meta_json=meta)).SerializeToString()
        return self._answer(task.task_id)

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
