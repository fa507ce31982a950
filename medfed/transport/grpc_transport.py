"""The deployment's Transport: what the round loop calls to have connected sites train and score.

The round loop drives it exactly as it drives the in-process transport, plus one call: dispatch()
hands a whole stage to its sites at once (they train in parallel, on their own machines); train()
then waits for one site's answer until the round's deadline. A site that is not connected, breaks
its connection, misses the deadline or answers with something that is not a model state raises
TransportError or IncompatibleUpdate: the round loop records it and goes on without that site.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from typing import Any

from medfed.client.trainer import TrainOptions
from medfed.errors import BadReply, IncompatibleUpdate, TransportError
from medfed.transport import replies
from medfed.transport.codec import encode_state
from medfed.transport.grpc_server import Reply, SiteChannel, SiteRegistry
from medfed.transport.open_tasks import OpenTasks
from medfed.transport.proto import medfed_pb2 as pb
from medfed.types import Metrics, SiteId, StateDict, Update

METADATA_ALLOWANCE = 1 << 20  # what an update may add to the model's size (its JSON header)


class GrpcTransport:
    def __init__(self, registry: SiteRegistry, round_seconds: float, eval_seconds: float) -> None:
        self.registry = registry
        self.round_seconds = round_seconds
        self.eval_seconds = eval_seconds
        self.bytes_up = 0
        self.bytes_down = 0
        self.round = 0
        self.masked = False  # secure aggregation: updates are masked inputs, audited as such
        self.key_holders: set[SiteId] | None = None  # ... from the sites of the stage's key book
        self._deadline = time.monotonic() + round_seconds
        self._pending: dict[SiteId, tuple[SiteChannel, int, Future]] = {}
        self._sent: tuple[StateDict, bytes] | None = None
        self.common_options: dict[str, Any] = {}  # sent with every model (a harmonization reference)
        self.eval_bytes: dict[SiteId, int] = {}  # what each site sent to score the final model
        self.bounds = replies.SampleBounds()  # [deployment] max_samples_per_site
        # A reply may weigh what was sent; a strategy whose replies are larger (homomorphic
        # ciphertexts, ~18x the model) says how much larger a reply to a model may be.
        self.reply_bytes: Callable[[StateDict], int] | None = None
        self.replays = replies.ReplayLedger()  # a server's ledger is kept in its state database
        self.open_tasks = OpenTasks()  # the round's unanswered train tasks (split learning's calls)
        self._counting = threading.Lock()  # split learning's calls count from other threads

    def count(self, up: int = 0, down: int = 0) -> None:
        """Bytes to and from the sites (the round's traffic)."""
        with self._counting:
            self.bytes_up += up
            self.bytes_down += down

    def begin_round(self, round_index: int) -> None:
        """The round's deadline starts now: every site's update must be in before it."""
        self.round = round_index
        self._deadline = time.monotonic() + self.round_seconds
        self._pending.clear()
        self.open_tasks.clear()

    def dispatch(self, payloads: dict[SiteId, StateDict], options: TrainOptions) -> None:
        for site, state in payloads.items():
            try:
                self._pending[site] = self._send(site, "train", asdict(options), state)
            except TransportError:
                pass  # train() finds no pending task and reports the site as not connected

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        try:
            pending = self._pending.pop(site, None) or self._send(site, "train", asdict(options),
                                                                  state)
            reply = self._wait(site, pending, self._deadline, "the round's deadline")
        finally:  # the site's calls for this task (split learning) end with it
            self.open_tasks.close(site)
        digest = replies.digest_of(reply.blob)
        self.count(up=len(reply.blob))
        meta = reply.meta
        event = "masked_input_received" if self.masked else "update_received"
        self.registry.audit(event, site=site, round=self.round + 1, bytes=len(reply.blob),
                            sha256=digest, n_samples=_audited(meta.get("n_samples")))
        declared = pending[0].info.get("n_train")
        n_samples = self.bounds.check(meta.get("n_samples"), declared)
        self.replays.admit(digest, site, self.round + 1)
        return replies.update_of(site, meta, reply.blob, n_samples)

    def evaluate(self, site: SiteId, state: StateDict, split: str) -> Metrics:
        pending = self._send(site, "evaluate", {"split": split}, state)
        reply = self._wait(site, pending, time.monotonic() + self.eval_seconds, "its deadline")
        self.count(up=len(json.dumps(reply.meta)))
        return replies.metrics_of(reply.meta.get("metrics"))

    def ask_all(self, kind: str, states: dict[SiteId, StateDict], options: dict[str, Any],
                seconds: float) -> dict[SiteId, dict[str, Any] | TransportError]:
        """One task to each site at once (e.g. scoring the final model); each site's JSON answer,
        or why it gave none within `seconds`. The answer's bytes are counted as evaluation."""
        deadline = time.monotonic() + seconds
        answers = _metas(self._gather({site: lambda s=state, site=site: self._send(site, kind, options, s)
                                       for site, state in states.items()}, deadline, "its deadline"))
        for site, answer in answers.items():
            if not isinstance(answer, TransportError):
                self.eval_bytes[site] = len(json.dumps(answer))
        return answers

    def finish(self, reason: str) -> None:
        self.registry.goodbye_all(reason)

    def exchange(self, kind: str, bodies: dict[SiteId, dict[str, Any]]
                 ) -> dict[SiteId, dict[str, Any] | TransportError]:
        """A small JSON message to each site at once (secure aggregation's keys and shares); each
        site's JSON answer, or why it gave none before the round's deadline."""
        return _metas(self._gather({site: lambda b=body, site=site: self._send_blob(
            site, kind, {}, json.dumps(b).encode()) for site, body in bodies.items()},
            self._deadline, "the round's deadline"))

    def ask_each(self, kind: str, state: StateDict, options: dict[str, Any], sites: list[SiteId],
                 seconds: float) -> dict[SiteId, Reply | TransportError]:
        """One model-sized message to each site at once (homomorphic encryption's summed
        ciphertexts); each site's Reply (metadata and bytes), or why it gave none within
        `seconds`. Both ways are counted as the round's traffic."""
        blob = encode_state(state)
        return self.ask_blobs(kind, {site: blob for site in sites}, options, seconds)

    def ask_blobs(self, kind: str, blobs: dict[SiteId, bytes], options: dict[str, Any],
                  seconds: float, reply_bytes: int = 0) -> dict[SiteId, Reply | TransportError]:
        """Its own bytes to each site at once (p2p's sealed models, relayed); each site's Reply,
        or why it gave none within `seconds`. A reply may weigh reply_bytes (or what was sent).
        Both ways are counted as the round's traffic."""
        answers = self._gather({site: lambda site=site, blob=blob: self._send_blob(
            site, kind, options, blob, reply_bytes) for site, blob in blobs.items()},
            time.monotonic() + seconds, "its deadline")
        self.count(up=sum(len(a.blob) for a in answers.values() if isinstance(a, Reply)))
        return answers

    def _gather(self, sends: dict[SiteId, Callable[[], tuple[SiteChannel, int, Future]]],
                deadline: float, what: str) -> dict[SiteId, Reply | TransportError]:
        """Send to every site first (they work in parallel), then wait for each answer."""
        pending: dict[SiteId, tuple[SiteChannel, int, Future] | TransportError] = {}
        for site, send in sends.items():
            try:
                pending[site] = send()
            except TransportError as exc:
                pending[site] = exc
        answers: dict[SiteId, Reply | TransportError] = {}
        for site, sent in pending.items():
            try:
                if isinstance(sent, TransportError):
                    raise sent
                answers[site] = self._wait(site, sent, deadline, what)
            except TransportError as exc:
                answers[site] = exc
        return answers

    def _send(self, site: SiteId, kind: str, options: dict[str, Any], state: StateDict
              ) -> tuple[SiteChannel, int, Future]:
        blob = self._encode(state)
        reply = self.reply_bytes(state) if self.reply_bytes is not None else 0
        return self._send_blob(site, kind, {**options, **self.common_options}, blob, reply)

    def _send_blob(self, site: SiteId, kind: str, options: dict[str, Any], blob: bytes,
                   reply_bytes: int = 0) -> tuple[SiteChannel, int, Future]:
        if kind == "train" and self.key_holders is not None and site not in self.key_holders:
            raise TransportError(f"site {site} holds no keys of this round's secure aggregation "
                                 "(it did not advertise or share them)")
        channel = self.registry.get(site)
        if channel is None:
            raise TransportError(f"site {site} is not connected")
        task = pb.Task(task_id=self.registry.next_task_id(), kind=kind, size=len(blob),
                       options_json=json.dumps(options), round=self.round + 1)
        if kind == "train":  # open before the site can have it: its first call may come at once
            self.open_tasks.open(site, channel, task.task_id)
        future = channel.send(task, blob, limit=max(len(blob), reply_bytes) + METADATA_ALLOWANCE)
        self.count(down=len(blob))
        return channel, task.task_id, future

    def _wait(self, site: SiteId, pending: tuple[SiteChannel, int, Future], deadline: float,
              what: str) -> Reply:
        """The site's Reply, or why there is none: every site-caused problem is a TransportError
        (BadReply for a broken answer), so no path lets a site's answer stop the server."""
        channel, task_id, future = pending
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            channel.abandon(task_id)
            raise TransportError(f"site {site} missed {what}") from None
        except IncompatibleUpdate as exc:
            raise BadReply(f"site {site}: {exc}") from None

    def _encode(self, state: StateDict) -> bytes:
        """Once per model: every site of a FedAvg round is sent the same global state."""
        if self._sent is None or self._sent[0] is not state:
            self._sent = (state, encode_state(state))
        return self._sent[1]



def _metas(answers: dict[SiteId, Reply | TransportError]) -> dict[SiteId, dict[str, Any] | TransportError]:
    return {site: a if isinstance(a, TransportError) else a.meta for site, a in answers.items()}


def _audited(value: Any) -> Any:
    """A claimed count as the audit shows it: itself when it is a plausible integer, else its text
    cut short (a 100,000-digit number must not make a 100 KB audit line)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 63:
        return value
    return str(value)[:40]
