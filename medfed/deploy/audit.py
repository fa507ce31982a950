"""The audit trail: append-only JSON lines, each chained to the one before it and signed.

Every line is a JSON object with `seq` (1, 2, ...), `time`, `event`, the event's fields, `prev`
(the SHA-256 of the previous line's bytes; 64 zeros for the first line), `hash` (the SHA-256 of
the line's canonical JSON without `hash` and `sig`) and `sig`, the server's signature of `hash`
(deploy/signatures.py; absent when the server runs with --insecure, which has no key). After
every record the state database stores the new head (seq, hash, sig): a trail cut short, emptied
or rolled back no longer reaches the database's head, a forged or re-chained line has no valid
signature (deploy/audit_verify.py checks both). It records who did what when; never patient data,
never key material.

Two limits keep a hostile peer from filling the disk through it: every text written is cut to
MAX_TEXT characters (a 3-million-character site name becomes 256 and a note of its length), and
refusals (`auth_failed`, `site_refused`) pass a RefusalGate: per window of 60 s, each (event,
reason, peer host) is written once and at most 20 refusals in all; the rest are counted and written
as one bounded `refusals_suppressed` record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfed.deploy.signatures import PrivateKey, sign
from medfed.deploy.state import AuditHead

GENESIS = "0" * 64
MAX_TEXT = 256  # characters of any string field (site names, peers, reasons)
MAX_ITEMS = 1000  # entries of any list or table field
REFUSALS = frozenset({"auth_failed", "site_refused"})


class RefusalGate:
    """Decides which refusals are written; counts the others (bounded) until they are reported."""

    def __init__(self, window: float = 60.0, burst: int = 20, keys: int = 50,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.burst, self.keys, self.clock = window, burst, keys, clock
        self._start = clock()
        self._seen: set[tuple[str, str, str]] = set()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._other = 0
        self._since: str | None = None
        self._due = False

    def admit(self, event: str, fields: dict[str, Any]) -> bool:
        now = self.clock()
        if now - self._start >= self.window:
            self._start, self._seen = now, set()
            self._due = self._since is not None  # what the last window counted is reported now
        key = (event, str(fields.get("reason", ""))[:120], _host(str(fields.get("peer", ""))))
        if key not in self._seen and len(self._seen) < self.burst:
            self._seen.add(key)
            return True
        self._since = self._since or _now()
        if key in self._counts or len(self._counts) < self.keys:
            self._counts[key] = self._counts.get(key, 0) + 1
        else:
            self._other += 1
        return False

    def take(self, force: bool) -> dict[str, Any] | None:
        """The fields of a `refusals_suppressed` record for what was counted, once its window has
        ended (or now, with force), else None."""
        if self._since is None or not (force or self._due
                                       or self.clock() - self._start >= self.window):
            return None
        counts = [{"event": e, "reason": r, "peer": p, "n": n}
                  for (e, r, p), n in sorted(self._counts.items(), key=lambda kv: -kv[1])]
        fields = {"since": self._since, "counts": counts, "other": self._other,
                  "total": sum(self._counts.values()) + self._other}
        self._counts, self._other, self._since, self._due = {}, 0, None, False
        return fields


class AuditLog:
    """Thread-safe appender; reopening a log continues its chain (a verified one: see
    audit_verify.open_trail). key signs every record; on_head receives every new head."""

    def __init__(self, path: Path, key: PrivateKey | None = None,
                 on_head: Callable[[AuditHead], None] | None = None,
                 gate: RefusalGate | None = None) -> None:
        self.path, self.key, self.on_head = path, key, on_head
        self.gate = gate or RefusalGate()
        self._lock = threading.Lock()
        self._closed = False
        self._prev, self._seq = GENESIS, 0
        self._first: str | None = None  # the first record's hash: the trail's identity
        self._head: AuditHead | None = None
        if path.exists() and path.stat().st_size:
            lines = path.read_bytes().rstrip(b"\n").split(b"\n")
            last = json.loads(lines[-1])
            self._prev, self._seq = sha256(lines[-1]), int(last["seq"])
            self._first = json.loads(lines[0])["hash"]
            self._head = AuditHead(last["seq"], last["hash"], last.get("sig", ""))

    @property
    def signed(self) -> bool:
        return self.key is not None

    def witness_head(self) -> dict[str, Any] | None:
        """The latest head as the sites keep it (deploy/audit_witness.py), None before a record."""
        with self._lock:
            if self._head is None or self._first is None:
                return None
            return {"trail": self._first, "seq": self._head.seq, "hash": self._head.hash,
                    "sig": self._head.sig}

    def close(self) -> None:
        """No record after this one returns (a record in progress completes first): the state
        that anchors the trail is about to close."""
        with self._lock:
            self._closed = True

    def record(self, event: str, **fields: Any) -> None:
        fields = bounded(fields)
        with self._lock:
            if self._closed:
                return  # e.g. a site's stream that ended after its federation closed
            refusal = event in REFUSALS
            admitted = not refusal or self.gate.admit(event, fields)
            suppressed = self.gate.take(force=not refusal)
            if suppressed is not None:
                self._append("refusals_suppressed", suppressed)
            if admitted:
                self._append(event, fields)

    def _append(self, event: str, fields: dict[str, Any]) -> None:
        entry = {"seq": self._seq + 1, "time": _now(), "event": event, **fields, "prev": self._prev}
        entry["hash"] = sha256(canonical(entry))
        if self.key is not None:
            entry["sig"] = sign(self.key, entry["hash"])
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._prev, self._seq = sha256(line), entry["seq"]
        self._first = self._first or entry["hash"]
        self._head = AuditHead(entry["seq"], entry["hash"], entry.get("sig", ""))
        if self.on_head is not None:
            self.on_head(self._head)


def bounded(value: Any) -> Any:
    """value with every string cut to MAX_TEXT characters and every list or table to MAX_ITEMS."""
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else f"{value[:MAX_TEXT]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {bounded(str(k)): bounded(v) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [bounded(v) for v in value[:MAX_ITEMS]]
    return value


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: its JSON without `hash` and `sig`."""
    return json.dumps({k: v for k, v in entry.items() if k not in ("hash", "sig")}, sort_keys=True,
                      separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _host(peer: str) -> str:
    """ipv4:10.0.0.5:51234 -> ipv4:10.0.0.5 (a flood comes from ever new ports)."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer[:120]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
