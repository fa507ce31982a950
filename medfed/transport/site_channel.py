"""One connected site, as the server sees it: an outbox of tasks to send (each task's header, then
its bytes in chunks) and the tasks it has not answered yet, whose answers a reader thread puts back
together from chunks, within each task's size limit (replies.py checks each header), resolving
the task's future. A broken stream fails the site's open tasks at once."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from medfed.errors import IncompatibleUpdate, TransportError
from medfed.transport import chunks, replies
from medfed.transport.proto import medfed_pb2 as pb
from medfed.types import SiteId


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
        self.malformed = 0  # messages that were not protocol messages, dropped
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
            meta = replies.parse_meta(result.meta_json)
            if result.error:
                raise TransportError(f"site {self.site} failed: {result.error[:300]}")
            replies.check_size(result.size, task.limit)
            task.assembly = chunks.Assembly(result.size, task.limit)
        except (TransportError, IncompatibleUpdate) as exc:
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

    def fail(self, task_id: int, exc: Exception) -> None:
        """End an open task with exc (its remaining chunks are dropped): the site's failure."""
        self._fail(task_id, exc)

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
