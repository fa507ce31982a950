"""The coordinator's jobs: experiments submitted by an administrator, run one at a time.

A job is a federation file (the task and how to learn it, with its [deployment] sites): `medfed job
submit FILE.toml` queues it, the coordinator runs the oldest queued job in its own state folder
(STATE/jobs/<id>/: database, audit trail, checkpoints, summary, model) while the site agents stay
connected from one job to the next. Jobs live in STATE/jobs.sqlite (owner-only), so a restarted
coordinator knows them; a job that was running when the coordinator stopped is run again with
--resume semantics (its own state folder continues).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from medfed.errors import ConfigError

STATUSES = ("queued", "running", "done", "failed", "aborted")
SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, submitted TEXT, submitted_by TEXT, name TEXT,
    status TEXT, config_toml TEXT, detail TEXT, started TEXT, ended TEXT)"""


class JobStore:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / "jobs.sqlite"
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(SCHEMA)
        self.folder = folder

    def submit(self, config_toml: str, name: str, by: str) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO jobs (submitted, submitted_by, name, status, config_toml, detail) "
                "VALUES (?, ?, ?, 'queued', ?, '')", (_now(), by, name[:200], config_toml))
            return int(cursor.lastrowid or 0)

    def jobs(self) -> list[dict[str, Any]]:
        return [self._row(r) for r in self._query("SELECT * FROM jobs ORDER BY id", ())]

    def job(self, job_id: int) -> dict[str, Any]:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise ConfigError(f"no job {job_id}; `medfed job list` shows the jobs")
        return self._row(rows[0])

    def config_of(self, job_id: int) -> str:
        return str(self._query("SELECT config_toml FROM jobs WHERE id = ?", (job_id,))[0][0])

    def next_to_run(self) -> int | None:
        """A job left running by a stopped coordinator first (it resumes), then the oldest queued."""
        for status in ("running", "queued"):
            rows = self._query("SELECT id FROM jobs WHERE status = ? ORDER BY id LIMIT 1", (status,))
            if rows:
                return int(rows[0][0])
        return None

    def set_status(self, job_id: int, status: str, detail: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown job status {status}")
        column = "started" if status == "running" else "ended"
        with self._lock:
            self._db.execute(f"UPDATE jobs SET status = ?, detail = ?, {column} = ? WHERE id = ?",
                             (status, detail[:500], _now(), job_id))

    def folder_of(self, job_id: int) -> Path:
        return self.folder / "jobs" / str(job_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _row(self, row: tuple) -> dict[str, Any]:
        names = ("id", "submitted", "submitted_by", "name", "status", "config_toml", "detail",
                 "started", "ended")
        out = dict(zip(names, row, strict=True))
        out.pop("config_toml")
        summary = self.folder_of(out["id"]) / "summary.json"
        if summary.is_file():
            test = json.loads(summary.read_text()).get("test", {})
            out["test_auc"] = test.get("auc")
        out["state"] = str(self.folder_of(out["id"]))
        return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
