"""The server's durable state: SQLite (WAL) for the federation, its sites, rounds and metrics, and
the global model after every completed round as a safetensors checkpoint.

A round is completed when its row is committed. The checkpoint is written first (temporary file,
fsync, atomic rename), then the row that names it, in one transaction with the round's metrics: a
crash at any point leaves either the round fully recorded or not at all, and the round's primary key
makes recording it twice impossible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from medfed.errors import ConfigError
from medfed.output import round_record
from medfed.server.round_loop import RoundResult
from medfed.transport.codec import decode_state, encode_state
from medfed.types import StateDict

SCHEMA = """
CREATE TABLE IF NOT EXISTS federation (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, first_seen TEXT, last_seen TEXT,
                                  info_json TEXT);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, closed_at TEXT NOT NULL,
                                   result_json TEXT NOT NULL, checkpoint TEXT NOT NULL,
                                   sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (round INTEGER, site TEXT, name TEXT, value REAL,
                                    PRIMARY KEY (round, site, name));
"""
KEEP_CHECKPOINTS = 2


class StateStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # gRPC threads record sites while the loop records rounds
        self._db = sqlite3.connect(folder / "medfed.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, key: str) -> str | None:
        row = self._query("SELECT value FROM federation WHERE key = ?", (key,))
        return row[0][0] if row else None

    def put(self, key: str, value: str) -> None:
        self._write([("INSERT OR REPLACE INTO federation VALUES (?, ?)", (key, value))])

    def record_site(self, name: str, info: dict[str, Any] | None = None) -> None:
        now = _now()
        statements = [("INSERT OR IGNORE INTO sites VALUES (?, ?, ?, ?)", (name, now, now, "{}")),
                      ("UPDATE sites SET last_seen = ? WHERE name = ?", (now, name))]
        if info is not None:
            statements.append(("UPDATE sites SET info_json = ? WHERE name = ?",
                               (json.dumps(info), name)))
        self._write(statements)

    def site_info(self) -> dict[str, dict[str, Any]]:
        return {name: json.loads(info) for name, info in
                self._query("SELECT name, info_json FROM sites ORDER BY name", ())}

    def record_round(self, result: RoundResult, state: StateDict, metadata: dict[str, Any]) -> str:
        """Checkpoint the global model, then commit the round; returns the checkpoint's SHA-256."""
        if self._query("SELECT 1 FROM rounds WHERE round = ?", (result.round,)):
            raise ConfigError(f"round {result.round + 1} is already recorded; it is never recorded "
                              "twice (nor its checkpoint overwritten)")
        blob = encode_state(state, {**metadata, "round": result.round})
        digest = hashlib.sha256(blob).hexdigest()
        name = f"checkpoints/round-{result.round + 1:05d}.safetensors"
        atomic_write(self.folder / name, blob)
        rows = [("INSERT INTO rounds VALUES (?, ?, ?, ?, ?)",
                 (result.round, _now(), json.dumps(round_record(result)), name, digest))]
        rows += [("INSERT INTO metrics VALUES (?, ?, ?, ?)", (result.round, site, key, value))
                 for site, scores in result.val.items() for key, value in scores.items()
                 if isinstance(value, (int, float)) and math.isfinite(value)]
        self._write(rows)
        self._prune(result.round)
        return digest

    def completed_rounds(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM rounds", ())[0][0])

    def last_checkpoint(self) -> tuple[int, StateDict] | None:
        rows = self._query("SELECT round, checkpoint FROM rounds ORDER BY round DESC LIMIT 1", ())
        if not rows:
            return None
        round_index, name = rows[0]
        return int(round_index), decode_state((self.folder / name).read_bytes())

    def history(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._query("SELECT result_json FROM rounds ORDER BY round",
                                                      ())]

    def _prune(self, latest: int) -> None:
        for path in (self.folder / "checkpoints").glob("round-*.safetensors"):
            if int(path.stem.split("-")[1]) <= latest + 1 - KEEP_CHECKPOINTS:
                path.unlink(missing_ok=True)

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise ConfigError(f"state store refused a duplicate record: {exc}") from None

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync it, rename it over path, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()
