"""The server's durable state: SQLite (WAL) for the federation, its sites, rounds and metrics, and
the global model after every completed round as a safetensors checkpoint.

A round is completed when its row is committed. The checkpoint is written first (temporary file,
fsync, atomic rename), then the row that names it, in one transaction with the round's metrics: a
crash at any point leaves either the round fully recorded or not at all, and the round's primary key
makes recording it twice impossible.

The store also keeps the audit trail's anchor: the latest signed head (record count, hash,
signature), updated with every audit record (deploy/audit.py), and the public key that signs the
trail; `medfed audit verify` and `--resume` compare the trail with it (deploy/audit_verify.py).
Opening a store locks its folder (one server per folder) and checks its database
(deploy/state_files.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfed.algorithms.checkpoint import Checkpoint, from_bytes, to_bytes
from medfed.deploy.state_files import (
    DATABASE,
    atomic_write,
    lock_folder,
    open_database,
    private_dir,
    unlock_folder,
)
from medfed.errors import ConfigError, StateError
from medfed.output import round_record
from medfed.server.round_loop import RoundResult
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
CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
                                       hash TEXT NOT NULL, sig TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS update_digests (sha256 TEXT PRIMARY KEY, site TEXT NOT NULL,
                                           round INTEGER NOT NULL);
"""
__all__ = ["AuditAnchor", "AuditHead", "StateStore", "atomic_write", "read_anchor"]


@dataclass(frozen=True)
class AuditHead:
    """The audit trail's last record as the database knows it: its seq (the record count), its
    hash, and the server's signature of that hash ("" when the server ran without a key)."""

    seq: int
    hash: str
    sig: str


@dataclass(frozen=True)
class AuditAnchor:
    """What the state database says about the audit trail."""

    head: AuditHead | None
    key_pem: str | None  # the public key that signs the trail; "" unsigned; None not yet known
    rounds: dict[int, str]  # completed rounds (numbered from 1) -> their checkpoint's SHA-256


KEEP_CHECKPOINTS = 2


class StateStore:
    """A state folder, locked while open. resume=True: the database must exist and hold a
    federation (StateError otherwise, one line)."""

    def __init__(self, folder: Path, resume: bool = False) -> None:
        self.folder = folder
        if resume and not folder.is_dir():
            raise StateError(f"--resume: there is no state folder {folder}; give the folder of the "
                             "federation to continue, or drop --resume to start a new one")
        private_dir(folder / "checkpoints")
        os.chmod(folder, 0o700)
        self._lock = threading.Lock()  # gRPC threads record sites while the loop records rounds
        self._lockfd = lock_folder(folder)
        try:
            self._db = open_database(folder / DATABASE, resume, SCHEMA)
        except BaseException:
            unlock_folder(self._lockfd)
            raise
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
                unlock_folder(self._lockfd)

    def set_audit_head(self, head: AuditHead) -> None:
        self._write([("INSERT OR REPLACE INTO audit_head VALUES (1, ?, ?, ?)",
                      (head.seq, head.hash, head.sig))])

    def anchor(self) -> AuditAnchor:
        with self._lock:
            return _anchor(self._db)

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

    def record_update_digest(self, digest: str, site: str, round_number: int) -> None:
        """An update's SHA-256, kept so that a resumed server still refuses its replay."""
        self._write([("INSERT OR IGNORE INTO update_digests VALUES (?, ?, ?)",
                      (digest, site, round_number))])

    def update_digests(self) -> dict[str, tuple[str, int]]:
        return {d: (s, r) for d, s, r in self._query("SELECT sha256, site, round FROM update_digests",
                                                     ())}

    def site_info(self) -> dict[str, dict[str, Any]]:
        return {name: json.loads(info) for name, info in
                self._query("SELECT name, info_json FROM sites ORDER BY name", ())}

    def record_round(self, result: RoundResult, checkpoint: Checkpoint | StateDict,
                     metadata: dict[str, Any]) -> str:
        """Checkpoint everything the strategy holds (algorithms/checkpoint.py; a bare state dict is
        a checkpoint of the model alone), then commit the round; returns the checkpoint's SHA-256."""
        if self._query("SELECT 1 FROM rounds WHERE round = ?", (result.round,)):
            raise ConfigError(f"round {result.round + 1} is already recorded; it is never recorded "
                              "twice (nor its checkpoint overwritten)")
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint(dict(checkpoint))
        blob = to_bytes(checkpoint, {**metadata, "round": result.round})
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

    def last_checkpoint(self) -> tuple[int, Checkpoint] | None:
        rows = self._query("SELECT round, checkpoint FROM rounds ORDER BY round DESC LIMIT 1", ())
        if not rows:
            return None
        round_index, name = rows[0]
        checkpoint, _ = from_bytes((self.folder / name).read_bytes())
        return int(round_index), checkpoint

    def history(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._query("SELECT result_json FROM rounds ORDER BY round",
                                                      ())]

    def _prune(self, latest: int) -> None:
        for path in (self.folder / "checkpoints").glob("round-*.safetensors"):
            if int(path.stem.split("-")[1]) <= latest + 1 - KEEP_CHECKPOINTS:
                path.unlink(missing_ok=True)

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            if self._closed:
                raise StateError(f"the state store {self.folder} is closed")
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


def read_anchor(folder: Path) -> AuditAnchor:
    """The audit anchor of a state folder, read-only and without its lock (a running server's
    state can be checked)."""
    path = folder / DATABASE
    if not path.is_file() or not path.stat().st_size:
        raise StateError(f"no state database {path}; give --state the server's state folder")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _anchor(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"the state database {path} cannot be read ({exc})") from None


def _anchor(db: sqlite3.Connection) -> AuditAnchor:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    head = db.execute("SELECT seq, hash, sig FROM audit_head").fetchall() \
        if "audit_head" in tables else []
    key = db.execute("SELECT value FROM federation WHERE key = 'audit_key'").fetchall() \
        if "federation" in tables else []
    rounds = db.execute("SELECT round, sha256 FROM rounds").fetchall() if "rounds" in tables else []
    return AuditAnchor(AuditHead(*head[0]) if head else None, key[0][0] if key else None,
                       {int(r) + 1: str(digest) for r, digest in rounds})


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
