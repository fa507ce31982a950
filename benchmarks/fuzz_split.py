"""The protocol fuzzer's Split calls (fuzz_protocol.py --split): site-b, with its valid
certificate, calling the server's Split.Forward / Split.Backward (deploy/split_service.py) with
hostile requests, both while it holds a train task and when it holds none.

Every train task the server hands site-b runs a short script on it: maybe an honest forward (and
its backward), so that the gradient's checks are reached too; up to two calls that must be refused
without ending the task (a valid forward naming a task never issued or just below its own id,
site-a's of the same round; a replay from a closed task; a message over gRPC's 4 MiB limit); then
one hostile call that must end the task (random bytes, a truncated or bit-flipped valid request,
wrong name, an extra tensor, wrong dtype, wrong shape, a batch over batch_size or of zero, NaN,
Inf, a huge announced shape or header, a backward without a forward, for another forward, or
replayed; in turns, so a short run tries each); and, once the server has closed the task, a valid
call naming it. Between tasks it sends the same hostile calls naming tasks
that are closed or were never issued, and replays requests the server once accepted.

Only "forward", "backward" and a bit flip that leaves the request valid may be answered OK; any
other kind answered OK is counted in `accepted` (must stay empty). The reply codes of every kind
are tallied.
"""

from __future__ import annotations

import json
import random
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from medfed.config_split import parse_cut
from medfed.deploy.server_model import ServerModel
from medfed.deploy.settings import load_federation
from medfed.models.blocks import SplitLayout
from medfed.transport.grpc_channel import CLIENT_OPTIONS
from medfed.transport.grpc_split import BACKWARD, FORWARD, SERVICE
from medfed.transport.proto import medfed_pb2 as pb
from medfed.transport.split_channel import ACTIVATIONS, GRADIENT, encode_tensor

HONEST = {"forward", "backward", "mutated, still valid"}  # the only kinds that may be answered OK
OVERSIZED = 5 << 20  # over the 4 MiB message limit: gRPC itself must refuse it
Shape = tuple[int, ...]


@dataclass
class SplitTally:
    calls_in_task: int = 0  # calls made while site-b held a train task
    calls_no_task: int = 0
    replies: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> reply code -> count
    accepted: dict[str, int] = field(default_factory=dict)  # hostile kinds answered OK (must be {})


@dataclass(frozen=True)
class Cut:
    """What the plan fixes at the seam: per-sample shapes at both cuts, the largest batch."""

    first: Shape
    second: Shape
    max_batch: int

    @classmethod
    def of_federation(cls, path: Path) -> Cut:
        fed = load_federation(path)
        model = ServerModel.build(fed.config, fed.task)
        layout = SplitLayout.of(model.network(), *parse_cut(fed.config.federation.cut))
        first, second = layout.cut_shapes(model.input_shape)
        return cls(tuple(first), tuple(second), fed.config.training.batch_size)


def request(task_id: int, tensor: bytes) -> bytes:
    return pb.SplitTensor(task_id=task_id, tensor=tensor).SerializeToString()


def safetensors_blob(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    """Hand-made safetensors bytes: the header may announce anything (shape, offsets, length)."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


class SplitCaller:
    """Site-b's hostile Split calls, on a channel of its own (the server binds a call to the
    certificate, not to the session's channel)."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials, rng: random.Random,
                 cut: Cut) -> None:
        options = [*CLIENT_OPTIONS, ("grpc.max_send_message_length", -1)]  # let OVERSIZED leave
        self.channel = grpc.secure_channel(address, credentials, options=options)
        self.rng, self.cut = rng, cut
        self.tally = SplitTally()
        self.closed: set[int] = set()  # site-b's train tasks the server is known to have closed
        self.accepted_forwards: deque[tuple[int, bytes]] = deque(maxlen=16)  # to replay later
        self.held: pb.Task | None = None
        self._script: Iterator[None] | None = None
        self._cycle: list[str] = []  # the closing kinds not yet tried in a task, shuffled

    def hold(self, task: pb.Task) -> None:
        self.held, self._script = task, self._in_task(task.task_id)

    def busy(self) -> bool:
        return self._script is not None

    def call(self) -> pb.Task | None:
        """One call: the held task's next one (returns the task when its script is done, to be
        answered on the session), else one naming no task of site-b's."""
        if self._script is None:
            self._between_tasks()
            return None
        try:
            next(self._script)
            return None
        except StopIteration:
            task, self.held, self._script = self.held, None, None
            return task

    def close(self) -> None:
        self.channel.close()

    # --- the scripts ---------------------------------------------------------------------------

    def _in_task(self, task_id: int) -> Iterator[None]:
        r, cut = self.rng, self.cut
        batch = r.randint(1, cut.max_batch)
        in_flight, last_backward = None, None
        if r.random() < 0.7:
            forward = request(task_id, self._tensor(ACTIVATIONS, (batch, *cut.first)))
            yield self._send("forward", FORWARD, forward, task_id)
            in_flight = batch
            if r.random() < 0.5:
                last_backward = request(task_id, self._tensor(GRADIENT, (batch, *cut.second)))
                yield self._send("backward", BACKWARD, last_backward, task_id)
                in_flight = None
        for _ in range(r.randint(0, 2)):
            yield self._wrong_task(task_id)
        kind, method, blob = self._closing(task_id, in_flight, last_backward, in_task=True)
        yield self._send(kind, method, blob, task_id)
        if task_id not in self.closed:  # e.g. RESOURCE_EXHAUSTED by gRPC: end it for certain
            yield self._send("NaN", FORWARD, self._bad_tensor("NaN", task_id, False), task_id)
        if task_id in self.closed and r.random() < 0.5:
            valid = request(task_id, self._tensor(ACTIVATIONS, (batch, *cut.first)))
            yield self._send("after its task closed", FORWARD, valid, task_id)

    def _between_tasks(self) -> None:
        """A call while site-b holds no task: naming a closed or never-issued one, or a replay."""
        r = self.rng
        closed = sorted(self.closed)
        task_id = r.choice(closed) if closed and r.random() < 0.6 else r.randrange(1 << 64)
        replays = [blob for t, blob in self.accepted_forwards if t in self.closed]
        if replays and r.random() < 0.3:
            self._send("replay after its task closed", FORWARD, r.choice(replays), None)
        elif r.random() < 0.3:
            batch = r.randint(1, self.cut.max_batch)
            blob = request(task_id, self._tensor(ACTIVATIONS, (batch, *self.cut.first)))
            name = "after its task closed" if task_id in self.closed else "task never issued"
            self._send(name, FORWARD, blob, None)
        else:
            kind, method, blob = self._closing(task_id, None, None)
            self._send(kind, method, blob, None)

    def _wrong_task(self, own: int) -> None:
        """A call the server must refuse without touching site-b's open task `own`: a valid
        forward naming another task, a replay from a closed one, or one too large for gRPC."""
        r = self.rng
        forward = lambda task_id: request(task_id, self._tensor(
            ACTIVATIONS, (r.randint(1, self.cut.max_batch), *self.cut.first)))
        # Ids below its own are never site-b's open task (a site has one, its newest): the one
        # just below is site-a's train task of the round, or an evaluation task.
        options = {"task never issued": lambda: forward(r.randrange(own + 10**6, 1 << 64)),
                   "another site's task": lambda: forward(own - r.choice([1, 2])),
                   "oversized message": lambda: r.randbytes(OVERSIZED)}
        replays = [blob for t, blob in self.accepted_forwards if t in self.closed]
        if replays:
            options["replay after its task closed"] = lambda: r.choice(replays)
        kind = r.choice(list(options))
        self._send(kind, FORWARD, options[kind](), own)

    def _closing(self, task_id: int, in_flight: int | None, last_backward: bytes | None,
                 in_task: bool = False) -> tuple[str, str, bytes]:
        """A hostile call that the server must refuse and that ends the site's task: (kind,
        method, request). A backward's tensor checks are reached only with a forward in flight.
        In a task the kinds take turns (a shuffled cycle), so a short run still tries each."""
        r = self.rng
        options: dict[str, Callable[[], tuple[str, bytes]]] = {}
        if in_flight is None:  # with a forward in flight a backward of its batch would be valid
            options["backward without a forward"] = lambda: (BACKWARD, request(
                task_id, self._tensor(GRADIENT, (r.randint(1, self.cut.max_batch),
                                                 *self.cut.second))))
        else:
            other = in_flight + 1 if in_flight < self.cut.max_batch else in_flight - 1
            options["backward for another forward"] = lambda: (BACKWARD, request(
                task_id, self._tensor(GRADIENT, (other, *self.cut.second))))
        if last_backward is not None:
            options["backward replayed"] = lambda: (BACKWARD, last_backward)
        for kind in TENSOR_KINDS:
            backward = in_flight is not None and r.random() < 0.5
            options[kind] = lambda k=kind, b=backward: (BACKWARD if b else FORWARD,
                                                        self._bad_tensor(k, task_id, b, in_flight))
        kind = self._next_kind(list(options)) if in_task else r.choice(list(options))
        method, blob = options[kind]()
        if kind in ("truncated", "mutated") and self._still_valid(blob, task_id, method, in_flight):
            kind = "mutated, still valid"
        return kind, method, blob

    def _next_kind(self, applicable: list[str]) -> str:
        if not any(kind in applicable for kind in self._cycle):
            self._cycle = self.rng.sample(CLOSING_KINDS, len(CLOSING_KINDS))
        kind = next(k for k in self._cycle if k in applicable)
        self._cycle.remove(kind)
        return kind

    # --- requests --------------------------------------------------------------------------------

    def _tensor(self, name: str, shape: Shape, dtype: torch.dtype = torch.float32) -> bytes:
        generator = torch.Generator().manual_seed(self.rng.randrange(1 << 31))
        return encode_tensor(name, torch.randn(shape, generator=generator) * 0.01) \
            if dtype == torch.float32 else _encode_as(name, torch.zeros(shape, dtype=dtype))

    def _bad_tensor(self, kind: str, task_id: int, backward: bool, in_flight: int | None = None
                    ) -> bytes:
        """A request of this kind for the forward (or, with a forward in flight, its backward)."""
        r, cut = self.rng, self.cut
        name, per_sample = (GRADIENT, cut.second) if backward else (ACTIVATIONS, cut.first)
        batch = in_flight if backward and in_flight else r.randint(1, cut.max_batch)
        shape = (batch, *per_sample)
        valid = request(task_id, self._tensor(name, shape))
        if kind == "random bytes":
            return r.randbytes(r.choice([0, 1, 7, 100, 5000]))
        if kind == "truncated":
            return valid[:r.randrange(len(valid))]
        if kind == "mutated":
            return _flipped(valid, r, task_id)
        return request(task_id, self._bad_blob(kind, name, shape))

    def _bad_blob(self, kind: str, name: str, shape: Shape) -> bytes:
        r = self.rng
        if kind == "wrong name":
            return self._tensor(r.choice(["labels", "images", ACTIVATIONS if name == GRADIENT
                                          else GRADIENT, ""]), shape)
        if kind == "extra tensor":
            x = torch.zeros(shape)
            return _encode_as(name, x, {"labels": torch.zeros(shape[0])})
        if kind == "wrong dtype":
            return self._tensor(name, shape, r.choice([torch.float64, torch.float16,
                                                       torch.int64, torch.uint8]))
        if kind == "wrong shape":
            wrong = r.choice([(*shape[:-1], shape[-1] + 1), shape[1:], (*shape, 1), (shape[0],)])
            return self._tensor(name, wrong)
        if kind == "batch over batch_size":
            return self._tensor(name, (self.cut.max_batch + r.randint(1, 100), *shape[1:]))
        if kind == "empty batch":
            return self._tensor(name, (0, *shape[1:]))
        if kind in ("NaN", "Inf"):
            x = torch.zeros(shape)
            x.view(-1)[r.randrange(x.numel())] = float("nan") if kind == "NaN" else float("-inf")
            return _encode_as(name, x)
        if kind == "huge announced shape":
            announced = r.choice([[1 << 40, *shape[1:]], [1 << 62, 1 << 62], [2**64 - 1]])
            return safetensors_blob({name: {"dtype": "F32", "shape": announced,
                                            "data_offsets": [0, 16]}}, bytes(16))
        # "huge header": a header length past anything the message holds
        return safetensors_blob({}, b"", length=r.choice([1 << 31, (1 << 63) - 1, 2**64 - 1]))

    def _still_valid(self, blob: bytes, task_id: int, method: str, in_flight: int | None) -> bool:
        """Whether a mutated request is still one the protocol allows (checked here with protobuf
        and safetensors, not with the server's own checks)."""
        try:
            message = pb.SplitTensor.FromString(blob)
            state = load_safetensors(message.tensor)
        except Exception:  # noqa: BLE001 - anything malformed
            return False
        name, per_sample = (GRADIENT, self.cut.second) if method == BACKWARD else \
            (ACTIVATIONS, self.cut.first)
        tensor = state.get(name)
        return (message.task_id == task_id and set(state) == {name} and tensor is not None
                and tensor.dtype == torch.float32 and tuple(tensor.shape[1:]) == per_sample
                and 1 <= tensor.shape[0] <= self.cut.max_batch
                and (method == FORWARD or tensor.shape[0] == in_flight)
                and bool(torch.isfinite(tensor).all()))

    # --- the call ------------------------------------------------------------------------------

    def _send(self, kind: str, method: str, blob: bytes, held: int | None) -> None:
        """One call, its reply code tallied; held: site-b's open task, which an INVALID_ARGUMENT
        (or a refusal naming that task itself) tells us the server has closed."""
        call = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None,
                                        response_deserializer=None)
        try:
            call(blob, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        if held is None:
            self.tally.calls_no_task += 1
        else:
            self.tally.calls_in_task += 1
        codes = self.tally.replies.setdefault(kind, {})
        codes[code.name] = codes.get(code.name, 0) + 1
        if code is grpc.StatusCode.OK and kind not in HONEST:
            self.tally.accepted[kind] = self.tally.accepted.get(kind, 0) + 1
        if code is grpc.StatusCode.OK and method == FORWARD and held is not None:
            self.accepted_forwards.append((held, blob))
        if held is not None and (code is grpc.StatusCode.INVALID_ARGUMENT or (
                code is grpc.StatusCode.FAILED_PRECONDITION and _names(blob) == held)):
            self.closed.add(held)


TENSOR_KINDS = ("random bytes", "truncated", "mutated", "wrong name", "extra tensor",
                "wrong dtype", "wrong shape", "batch over batch_size", "empty batch", "NaN", "Inf",
                "huge announced shape", "huge header")
CLOSING_KINDS = (*TENSOR_KINDS, "backward without a forward", "backward for another forward",
                 "backward replayed")


def _encode_as(name: str, tensor: torch.Tensor, extra: dict | None = None) -> bytes:
    """safetensors bytes of the tensor as it is (encode_tensor would make it float32)."""
    return save_safetensors({name: tensor.contiguous(), **(extra or {})})


def _flipped(request_blob: bytes, r: random.Random, task_id: int) -> bytes:
    """1 to 4 bits flipped in the request's framing: the tensor field's tag and length and its
    safetensors header. Not in the task id (a flip there could name an open task by chance), nor
    in the tensor's values (those flips leave a valid request)."""
    start = len(request(task_id, b""))
    message = pb.SplitTensor.FromString(request_blob)
    framing = len(request_blob) - start - len(message.tensor)  # the field's tag and length
    end = start + framing + 8 + int.from_bytes(message.tensor[:8], "little")
    out = bytearray(request_blob)
    for _ in range(r.randint(1, 4)):
        out[r.randrange(start, end)] ^= 1 << r.randrange(8)
    return bytes(out)


def _names(blob: bytes) -> int | None:
    try:
        return pb.SplitTensor.FromString(blob).task_id
    except Exception:  # noqa: BLE001 - not a protocol message
        return None
