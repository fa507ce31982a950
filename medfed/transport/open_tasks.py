"""The round's train tasks that are sent and not yet answered, one per site: what a call a site
makes while it trains (split learning's forward and backward, deploy/split_service.py) is bound to.

A site may act only for its own open task: `holding(site, task_id)` admits a call for the body of a
`with` block, under a lock that `close` (the round loop has the site's answer, or gave up on it)
also takes, so no call a site started can still run the server's middle once its task is closed
(a checkpoint, an evaluation). `fail` ends the site's task with the reason, as a broken answer
would: the round loop then records that site as failed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from medfed.errors import BadReply
from medfed.transport.site_channel import SiteChannel
from medfed.types import SiteId


class NotOpen(Exception):
    """A call for a task that is not the site's open train task (why, in one line)."""


class OpenTasks:
    def __init__(self) -> None:
        self._open: dict[SiteId, tuple[SiteChannel, int]] = {}
        self._lock = threading.RLock()  # fail() may be called inside holding()

    def open(self, site: SiteId, channel: SiteChannel, task_id: int) -> None:
        with self._lock:
            self._open[site] = (channel, task_id)

    def close(self, site: SiteId) -> None:
        with self._lock:
            self._open.pop(site, None)

    def clear(self) -> None:
        with self._lock:
            self._open.clear()

    def task_of(self, site: SiteId) -> int | None:
        with self._lock:
            entry = self._open.get(site)
        return entry[1] if entry is not None else None

    @contextmanager
    def holding(self, site: SiteId, task_id: int) -> Iterator[None]:
        """The body runs only if task_id is the site's open train task, and while it stays open."""
        with self._lock:
            entry = self._open.get(site)
            if entry is None:
                raise NotOpen(f"site {site} has no train task open in this round")
            if entry[1] != task_id:
                raise NotOpen(f"site {site} named task {task_id}; its open train task is {entry[1]}")
            yield

    def fail(self, site: SiteId, reason: str, task_id: int | None = None) -> None:
        """End the site's open task (if it is task_id, when given) as failed: the round loop
        records it as the site's failure."""
        with self._lock:
            entry = self._open.get(site)
            if entry is None or task_id not in (None, entry[1]):
                return
            del self._open[site]
        channel, opened = entry
        channel.fail(opened, BadReply(reason))
