"""The state folder on disk: private (folders 0700, files 0600), locked by one server at a time,
and a database that is checked before it is trusted.

`open_database` refuses, in one line that says what to do, a database that is missing or empty on
--resume, a directory in its place, a file that is not SQLite or fails SQLite's quick check
(truncated, garbled), and on --resume one that holds no federation (a garbled write-ahead log is
dropped by SQLite without a word, which would look like a new federation). The checks run on a
read-only connection, so a refused database is left exactly as it was found.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from medfed.errors import StateError

DATABASE = "medfed.sqlite"
LOCK = "medfed.lock"
NEW_STATE = "start a new federation in a new --state folder (without --resume)"


def private_dir(path: Path) -> Path:
    """Create path (and parents) if needed and make it readable by its owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def lock_folder(folder: Path) -> int:
    """An exclusive lock on folder/medfed.lock, held while the returned descriptor is open."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateError(f"{folder} is in use by another medfed server (pid {holder}); stop it, "
                         "or give this server another --state folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock_folder(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def open_database(path: Path, resume: bool, schema: str) -> sqlite3.Connection:
    """The state database, checked (see the module's docstring); created 0600 when new."""
    if path.exists() and not path.is_file():
        raise StateError(f"{path} is not a file (a directory?); move it away, or {NEW_STATE}")
    if resume and not path.exists():
        raise StateError(f"--resume: there is no state database {path}; restore it from a backup, "
                         f"or {NEW_STATE}")
    if resume and path.stat().st_size == 0:
        raise StateError(f"--resume: the state database {path} is empty (0 bytes); restore it from "
                         f"a backup, or {NEW_STATE}")
    if path.exists():
        os.chmod(path, 0o600)  # SQLite gives its -wal and -shm files the database's mode
        _check(path, resume)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _unusable(path, exc) from None
    return db


def _check(path: Path, resume: bool) -> None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise _unusable(path, exc) from None
    try:
        verdict = db.execute("PRAGMA quick_check").fetchall()
        if verdict != [("ok",)]:
            found = " ".join(str(verdict[0][0]).replace("*** in database main ***", "").split())
            raise StateError(f"the state database {path} is corrupt ({found[:120]}); "
                             f"restore it from a backup, or {NEW_STATE}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if resume and not ({"federation", "rounds"} <= tables and db.execute(
                "SELECT 1 FROM federation WHERE key = 'config_sha256'").fetchall()):
            raise StateError(f"--resume: the state database {path} holds no federation (emptied, "
                             f"or its write-ahead log {path.name}-wal was lost or garbled); "
                             f"restore it from a backup, or {NEW_STATE}")
    except sqlite3.DatabaseError as exc:
        raise _unusable(path, exc) from None
    finally:
        db.close()


def _unusable(path: Path, exc: Exception) -> StateError:
    return StateError(f"the state database {path} cannot be read ({exc}); restore it from a "
                      f"backup, or {NEW_STATE}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file (0600), fsync it, rename it over path, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)  # a left-over .tmp keeps its old mode through O_CREAT
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
