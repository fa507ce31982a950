"""Who may hold a Session stream, and how much of the server one identity may use.

A stream's identity is its certificate's common name, known when the stream opens: a stranger is
refused before any message is read. Then every identity, honest or not, is held to limits:

- at most `pending_per_identity` streams not yet past their hello, `pending_total` in all, and a
  hello within `first_message_seconds` (else the stream is cancelled);
- at most `connects_per_minute` new streams per identity (the newest live stream of a site
  replaces the older one, so one identity holds at most one live session);
- a hello of at most `hello_bytes` and a name of at most `name_chars`;
- every message at most chunks.MESSAGE_LIMIT bytes (gRPC refuses larger ones), and a stream's
  reader paced to `messages_per_second` (with a burst): gRPC's flow control then slows the sender.

The gRPC server is sized from the same limits (server_for): its worker threads cover every live
session and every pending stream, so streams that never say hello cannot starve honest sites.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from medfed.transport.grpc_channel import SERVER_OPTIONS


@dataclass(frozen=True)
class Limits:
    first_message_seconds: float = 5.0
    pending_per_identity: int = 1
    pending_total: int = 16
    connects_per_minute: int = 20
    hello_bytes: int = 256 << 10
    name_chars: int = 128
    messages_per_second: float = 2000.0
    message_burst: int = 4000
    streams_per_connection: int = 4


def server_for(n_sites: int, limits: Limits = Limits()) -> grpc.Server:
    """A gRPC server with a worker for each live session (a replaced one lingers briefly) and each
    pending stream, plus a margin for refusals; calls beyond are refused by gRPC itself."""
    workers = 2 * n_sites + limits.pending_total + 8
    options = [*SERVER_OPTIONS, ("grpc.max_concurrent_streams", limits.streams_per_connection),
               ("grpc.http2.max_ping_strikes", 2), ("grpc.max_metadata_size", 16 << 10)]
    return grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medfed-grpc"),
                       options=options, maximum_concurrent_rpcs=2 * workers)


class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._time = burst, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._time) * self.rate)
        self._time = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait(self) -> None:
        """Take one token, sleeping until there is one (paces a reader)."""
        while not self.take():
            time.sleep(min(1.0, (1 - self._tokens) / self.rate))


class Admission:
    """Pending streams and connection rates per identity (thread-safe)."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._connects: dict[str, Bucket] = {}

    def enter(self, identity: str, per_identity: bool = True) -> str | None:
        """Take a pending slot for a new stream of `identity`; why not, or None (then leave())."""
        lim = self.limits
        with self._lock:
            bucket = self._connects.setdefault(identity, Bucket(lim.connects_per_minute / 60,
                                                                lim.connects_per_minute))
            if sum(self._pending.values()) >= lim.pending_total:
                return f"too many streams waiting for their hello ({lim.pending_total})"
            if per_identity and self._pending.get(identity, 0) >= lim.pending_per_identity:
                return f"'{identity}' already has a stream waiting for its hello"
            if not bucket.take():
                return f"'{identity}' opened more than {lim.connects_per_minute} streams a minute"
            self._pending[identity] = self._pending.get(identity, 0) + 1
            return None

    def leave(self, identity: str) -> None:
        with self._lock:
            left = self._pending.get(identity, 0) - 1
            if left > 0:
                self._pending[identity] = left
            else:
                self._pending.pop(identity, None)

    def reader_pace(self) -> Bucket:
        return Bucket(self.limits.messages_per_second, self.limits.message_burst)
