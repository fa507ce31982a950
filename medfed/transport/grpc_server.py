"""The server end of the gRPC protocol: sites dial in and each holds one Session stream open.

Identity is the common name of the site's certificate (mutual TLS: gRPC has already checked that a
certificate signed by the federation's authority was presented); only the federation's sites are let
in. Each connected site gets a SiteChannel: an outbox of tasks the server sends, and the tasks it
has not answered yet. A reader thread per site puts the site's answers back together from chunks,
within the size limit of each task, and resolves the task's future. A broken stream fails that
site's open tasks at once, so the round goes on without it.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc

from medfed.errors import IncompatibleUpdate, TransportError
from medfed.transport import chunks
from medfed.transport.proto import medfed_pb2 as pb
from medfed.types import SiteId

SERVICE = "medfed.Federation"
METHOD = f"/{SERVICE}/Session"
REPLACED = "replaced by a newer connection of the same site"
Audit = Callable[..., None]  # audit(event, **fields): AuditLog.record, or a no-op


@dataclass
class Reply:
    """A site's answer to one task: its JSON metadata and, for training, the update's bytes."""

    meta: dict[str, Any]
    blob: bytes = b""


@dataclass
class _Task:
    future: Future
    limit: int
    assembly: chunks.Assembly | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class SiteChannel:
    def __init__(self, site: SiteId, peer: str, info: dict[str, Any]) -> None:
        self.site, self.peer, self.info = site, peer, info
        self.ready = False  # the site has loaded its data (its second hello): it can train now
        self._outbox: queue.Queue = queue.Queue()
        self._tasks: dict[int, _Task] = {}
        self._lock = threading.Lock()
        self.closed = threading.Event()

    def send(self, task: pb.Task, blob: bytes, limit: int) -> Future:
        """Queue a task and its model bytes; the future resolves to the site's Reply."""
        future: Future = Future()
        with self._lock:
            if self.closed.is_set():
                raise TransportError(f"site {self.site} disconnected")
            self._tasks[task.task_id] = _Task(future, limit)
        self._outbox.put((task, blob))
        return future

    def goodbye(self, reason: str) -> None:
        self._outbox.put(pb.ServerMessage(goodbye=pb.Goodbye(reason=reason)))
        self._outbox.put(None)

    def abandon(self, task_id: int) -> None:
        """Forget a task whose deadline passed: a late answer is dropped when it arrives."""
        with self._lock:
            self._tasks.pop(task_id, None)

    def close(self, reason: str) -> None:
        with self._lock:
            self.closed.set()
            tasks, self._tasks = self._tasks, {}
        for task in tasks.values():
            if not task.future.done():
                task.future.set_exception(TransportError(f"site {self.site} {reason}"))
        self._outbox.put(None)

    def outgoing(self) -> Iterator[pb.ServerMessage]:
        """The messages to the site: each task's header, then its model in chunks."""
        while True:
            item = self._outbox.get()
            if item is None:
                return
            if isinstance(item, pb.ServerMessage):
                yield item
                continue
            task, blob = item
            yield pb.ServerMessage(task=task)
            for piece in chunks.split(blob):
                yield pb.ServerMessage(chunk=pb.Chunk(task_id=task.task_id, data=bytes(piece)))

    def receive(self, message: pb.SiteMessage) -> None:
        """One message from the site; a broken answer fails its task, never the server."""
        kind = message.WhichOneof("body")
        if kind == "result":
            self._on_result(message.result)
        elif kind == "chunk":
            self._on_chunk(message.chunk)

    def _on_result(self, result: pb.Result) -> None:
        task = self._task(result.task_id)
        if task is None:
            return
        try:
            meta = json.loads(result.meta_json or "{}")
            if not isinstance(meta, dict):
                raise ValueError("metadata is not a JSON object")
        except ValueError as exc:
            return self._fail(result.task_id, IncompatibleUpdate(f"malformed metadata: {exc}"))
        if result.error:
            return self._fail(result.task_id, TransportError(f"site {self.site} failed: "
                                                             f"{result.error[:300]}"))
        try:
            task.assembly = chunks.Assembly(result.size, task.limit)
        except IncompatibleUpdate as exc:
            return self._fail(result.task_id, exc)
        task.meta = meta
        self._finish_if_complete(result.task_id, task)

    def _on_chunk(self, chunk: pb.Chunk) -> None:
        task = self._task(chunk.task_id)
        if task is None or task.assembly is None:
            return  # a late or refused task's chunks are dropped
        try:
            task.assembly.add(chunk.data)
        except IncompatibleUpdate as exc:
            return self._fail(chunk.task_id, exc)
        self._finish_if_complete(chunk.task_id, task)

    def _finish_if_complete(self, task_id: int, task: _Task) -> None:
        if task.assembly is not None and task.assembly.complete:
            self.abandon(task_id)
            if not task.future.done():  # a site may answer a task it already failed; once counts
                task.future.set_result(Reply(task.meta, task.assembly.result()))

    def _fail(self, task_id: int, exc: Exception) -> None:
        task = self._task(task_id)
        if task is not None:
            with self._lock:
                self._tasks[task_id] = _Task(task.future, 0)  # its remaining chunks are dropped
            if not task.future.done():
                task.future.set_exception(exc)

    def _task(self, task_id: int) -> _Task | None:
        with self._lock:
            return self._tasks.get(task_id)


class SiteRegistry:
    """The connected sites, and a way to wait until enough of them are there."""

    def __init__(self, sites: list[SiteId], audit: Audit) -> None:
        self.sites = list(sites)
        self.audit = audit
        self._channels: dict[SiteId, SiteChannel] = {}
        self._changed = threading.Condition()
        self._task_ids = itertools.count(1)

    def next_task_id(self) -> int:
        return next(self._task_ids)

    def get(self, site: SiteId) -> SiteChannel | None:
        with self._changed:
            return self._channels.get(site)

    def connected(self) -> list[SiteId]:
        with self._changed:
            return [s for s in self.sites if s in self._channels]

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until count sites are connected and ready to train."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(c.ready for c in self._channels.values()) >= count, timeout)

    def mark_ready(self, channel: SiteChannel) -> None:
        with self._changed:
            channel.ready = True
            self._changed.notify_all()

    def add(self, channel: SiteChannel) -> None:
        with self._changed:
            old = self._channels.get(channel.site)
            self._channels[channel.site] = channel
            self._changed.notify_all()
        if old is not None:  # the newest connection of a site wins; the older one is told why
            old.goodbye(REPLACED)
            old.close("reconnected: its earlier connection was closed")
        self.audit("site_connected", site=channel.site, peer=channel.peer)

    def remove(self, channel: SiteChannel, reason: str) -> None:
        with self._changed:
            if self._channels.get(channel.site) is channel:
                del self._channels[channel.site]
                self._changed.notify_all()
        if not channel.closed.is_set():
            channel.close(reason)
            self.audit("site_disconnected", site=channel.site, peer=channel.peer, reason=reason)

    def goodbye_all(self, reason: str) -> None:
        with self._changed:
            channels = list(self._channels.values())
        for channel in channels:
            channel.goodbye(reason)


class FederationServicer:
    """The Session RPC: authenticate, welcome, then stream tasks out and answers in."""

    def __init__(self, registry: SiteRegistry, welcome: Callable[[SiteId], pb.Welcome],
                 insecure: bool = False,
                 on_hello: Callable[[SiteId, dict[str, Any]], None] | None = None,
                 admit: Callable[[SiteId, dict[str, Any]], str | None] | None = None) -> None:
        """welcome(site): what a site is told when it connects. admit(site, hello): why a site
        whose identity is fine is still refused (its data does not fit the task), or None."""
        self.registry = registry
        self.welcome = welcome
        self.insecure = insecure
        self.on_hello = on_hello or (lambda site, info: None)
        self.admit = admit or (lambda site, info: None)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self.session, request_deserializer=pb.SiteMessage.FromString,
            response_serializer=pb.ServerMessage.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, {"Session": method})

    def session(self, requests: Iterator[pb.SiteMessage], context: grpc.ServicerContext
                ) -> Iterator[pb.ServerMessage]:
        peer = context.peer()
        try:
            info = _info(next(requests).hello)
        except (StopIteration, grpc.RpcError, ValueError):
            return
        site = self._identify(context, info, peer)
        if site is None:
            return
        refusal = self.admit(site, info)
        if refusal:
            self.registry.audit("site_refused", site=site, peer=peer, reason=refusal)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
            return
        channel = SiteChannel(site, peer, info)
        self.on_hello(site, info)
        self.registry.add(channel)
        reader = threading.Thread(target=self._read, args=(requests, channel), daemon=True,
                                  name=f"medfed-read-{site}")
        reader.start()
        context.add_callback(lambda: self.registry.remove(channel, "disconnected"))
        yield pb.ServerMessage(welcome=self.welcome(site))
        yield from channel.outgoing()

    def _identify(self, context: grpc.ServicerContext, info: dict[str, Any], peer: str
                  ) -> SiteId | None:
        claimed = str(info.get("site", ""))
        names = context.auth_context().get("x509_common_name") or []
        site = names[0].decode() if names else (claimed if self.insecure else "")
        reason = ("no client certificate" if not site
                  else f"'{site}' is not a site of this federation" if site not in self.registry.sites
                  else f"certificate of '{site}' used to claim '{claimed}'" if claimed != site
                  else "")
        if reason:
            self.registry.audit("auth_failed", peer=peer, reason=reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
            return None
        return site

    def _read(self, requests: Iterator[pb.SiteMessage], channel: SiteChannel) -> None:
        reason = "disconnected"
        try:
            for message in requests:
                if message.WhichOneof("body") == "hello":  # again, once the site loaded its data
                    channel.info = _info(message.hello)
                    self.on_hello(channel.site, channel.info)
                    if channel.info.get("refused"):  # the site's own policy refuses the plan
                        reason = "refused the plan"
                        self.registry.audit("site_refused", site=channel.site, peer=channel.peer,
                                            by="the site", reason=str(channel.info["refused"])[:300])
                        break
                    self.registry.mark_ready(channel)
                else:
                    channel.receive(message)
        except grpc.RpcError:
            reason = "connection lost"
        except Exception as exc:  # noqa: BLE001 - a site's broken stream ends that site, not the server
            reason = f"stream error: {type(exc).__name__}"
        self.registry.remove(channel, reason)


def _info(hello: pb.Hello) -> dict[str, Any]:
    """What a site says about itself: its name and, once loaded, its data's sizes (never data)."""
    info = json.loads(hello.info_json or "{}")
    if not isinstance(info, dict):
        raise ValueError("hello is not a JSON object")
    return info
