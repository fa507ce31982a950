"""The audit trail: append-only JSON lines, each chained to the one before it.

Every line is a JSON object with `seq`, `time`, `event`, the event's fields, `prev` (the SHA-256 of
the previous line's bytes; 64 zeros for the first line) and `hash` (the SHA-256 of the line's own
canonical JSON without `hash`). Editing, inserting or removing a line breaks the chain at that
line, which `medfed audit verify` reports. It records who did what when; never patient data, never
key material.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: int = 0  # the first broken line (1-based) when not ok
    reason: str = ""


class AuditLog:
    """Thread-safe appender; reopening a log continues its chain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._prev, self._seq = GENESIS, 0
        if path.exists() and path.stat().st_size:
            last = path.read_bytes().rstrip(b"\n").split(b"\n")[-1]
            self._prev, self._seq = _sha256(last), int(json.loads(last)["seq"])

    def record(self, event: str, **fields: Any) -> None:
        with self._lock:
            entry = {"seq": self._seq + 1, "time": dt.datetime.now(dt.timezone.utc).isoformat(),
                     "event": event, **fields, "prev": self._prev}
            entry["hash"] = _sha256(_canonical(entry))
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
            with self.path.open("ab") as f:
                f.write(line + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self._prev, self._seq = _sha256(line), entry["seq"]


def verify(path: Path) -> Verdict:
    """The first line whose content or link to the line before does not hold, if any."""
    prev = GENESIS
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line:
            continue
        try:
            entry = json.loads(line)
            claimed = entry.pop("hash")
        except (ValueError, KeyError, AttributeError, TypeError):
            return Verdict(False, number, "not a JSON audit record")
        if _sha256(_canonical(entry)) != claimed:
            return Verdict(False, number, "content does not match its hash (edited)")
        if entry.get("prev") != prev:
            return Verdict(False, number, "does not follow the line before (removed or inserted)")
        prev = _sha256(line)
    return Verdict(True)


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True,
                      separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
