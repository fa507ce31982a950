"""The state store: a completed round is recorded once with its checkpoint; a reopened store finds
the last completed round's model. And state that fails loudly: one server per state folder, a
private folder, and `medfed server --resume` refusing (one line, exit status 2, no traceback) every
broken database issue 19 found instead of restarting from round 0 or crashing.

Hand mutations that make these tests fail (each tried once):
- no lock (`lock_folder` returns without flock): the second server is not refused;
- no quick check (`_check` skips PRAGMA quick_check): the page only the quick check reads is
  not refused;
- no "holds a federation" check on --resume: the emptied database and the lost WAL restart from 0;
- files created with the default mode (os.open without 0o600): the permissions test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medfed.cli import main
from medfed.deploy.state import StateStore
from medfed.errors import ConfigError, StateError
from medfed.server.round_loop import RoundResult
from tests.deploy.trails import FEDERATION, REPO, commit_round, make_state, open_state, server_certs


def test_rounds_are_recorded_once_and_the_last_checkpoint_reloads(tmp_path: Path):
    store = StateStore(tmp_path)
    for r in range(3):
        result = RoundResult(round=r, sites=["site-a"], val={"site-a": {"auc": 0.5 + r / 10}})
        digest = store.record_round(result, {"w": torch.full((2,), float(r))}, {"algorithm": "fedavg"})
        assert len(digest) == 64
    with pytest.raises(ConfigError, match="already recorded"):
        store.record_round(RoundResult(round=2), {"w": torch.zeros(2)}, {})
    store.close()

    reopened = StateStore(tmp_path)
    assert reopened.completed_rounds() == 3
    last, checkpoint = reopened.last_checkpoint()
    assert last == 2 and torch.equal(checkpoint.tensors["w"], torch.full((2,), 2.0))
    assert [h["round"] for h in reopened.history()] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-00002.safetensors", "round-00003.safetensors"]
    reopened.close()


def test_sites_and_settings_persist(tmp_path: Path):
    store = StateStore(tmp_path)
    store.record_site("site-a", {"n_train": 40})
    store.record_site("site-a")
    store.put("config_sha256", "abc")
    store.close()
    reopened = StateStore(tmp_path)
    assert reopened.site_info() == {"site-a": {"n_train": 40}}
    assert reopened.get("config_sha256") == "abc" and reopened.get("missing") is None
    reopened.close()


def test_state_files_are_private(tmp_path: Path):
    """Attacker: another user of the server's machine, reading the state folder."""
    os.umask(0o022)
    made = make_state(tmp_path, rounds=2)
    (made.state / "medfed.lock").touch()
    for path in [made.state, *made.state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"
    from medfed.output import write_json

    write_json(made.state / "summary.json", {"auc": 1.0}, private=True)
    assert stat.S_IMODE((made.state / "summary.json").stat().st_mode) == 0o600


def test_a_second_server_on_the_same_state_is_refused(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    """Attacker: none; an operator who starts a second server on a running server's --state."""
    made = make_state(tmp_path, rounds=1)
    store, _ = open_state(made.state, made.certs, resume=True)
    try:
        with pytest.raises(StateError, match=f"in use by another medfed server \\(pid {os.getpid()}"):
            StateStore(made.state)
        other = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from medfed.deploy.state import StateStore; "
                                "StateStore(Path(sys.argv[1]))", str(made.state)],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        assert other.returncode != 0 and "in use by another medfed server" in other.stderr
        status, err = server(made, capsys, "--resume")
        assert status == 2 and "in use by another medfed server" in err
    finally:
        store.close()
    StateStore(made.state).close()  # released with the store


def server(made, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    """`medfed server ... --state STATE`: its exit status and its one line of stderr."""
    capsys.readouterr()
    status = main(["server", "--config", str(FEDERATION), "--certs", str(made.certs),
                   "--state", str(made.state), *extra])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return status, err.strip()


def garble(path: Path, start: float, end: float) -> None:
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = os.urandom(b - a)
    path.write_bytes(bytes(data))


def database(made) -> Path:
    return made.state / "medfed.sqlite"


CORRUPTIONS = {
    "database deleted": (lambda m: database(m).unlink(), "there is no state database"),
    "database truncated to 0 bytes": (lambda m: database(m).write_bytes(b""), "is empty"),
    "database truncated to half": (
        lambda m: os.truncate(database(m), database(m).stat().st_size // 2), "corrupt|cannot be read"),
    "database header garbled": (lambda m: garble(database(m), 0.0, 0.02), "cannot be read"),
    "database pages garbled": (lambda m: garble(database(m), 0.3, 0.7), "corrupt|cannot be read"),
    "a directory in its place": (
        lambda m: (database(m).unlink(), database(m).mkdir()), "is not a file"),
    "state folder missing": (lambda m: shutil.rmtree(m.state), "there is no state folder"),
    "database replaced by a fresh one": (
        lambda m: (database(m).unlink(), StateStore(m.state).close()), "holds no federation"),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_resume_refuses_a_broken_database_in_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture, corrupt: str):
    """Attacker: a failing disk (or a careless operator) under a stopped server's state."""
    made = make_state(tmp_path, rounds=2)
    damage, message = CORRUPTIONS[corrupt]
    damage(made)
    status, err = server(made, capsys, "--resume")
    assert status == 2 and err.startswith("medfed: error: ")
    assert re.search(message, err), err
    assert any(todo in err for todo in ("new --state folder", "backup", "drop --resume")), err


def test_a_page_only_the_quick_check_reads_is_refused(tmp_path: Path):
    """Attacker: a failing disk, under a page the server would read only rounds later (a crash
    then, not a refusal now)."""
    made = make_state(tmp_path, rounds=2)
    garble(database(made), 0.85, 0.95)  # past the update_digests pages
    with pytest.raises(StateError, match="is corrupt \\(Page \\d+") as refused:
        StateStore(made.state, resume=True)
    assert "\n" not in str(refused.value)


def crash_snapshot(tmp_path: Path):
    """The state folder as a crash leaves it: rounds committed in the write-ahead log only."""
    cert_folder = server_certs(tmp_path / "certs")
    live = tmp_path / "live"
    store, audit = open_state(live, cert_folder)
    commit_round(store, audit, 0)
    commit_round(store, audit, 1)
    snapshot = tmp_path / "state"
    shutil.copytree(live, snapshot, ignore=shutil.ignore_patterns("*-shm", "medfed.lock"))
    store.close()
    return type("Made", (), {"state": snapshot, "certs": cert_folder})()


@pytest.mark.parametrize("part, message", [
    ((0.0, 1.0), "holds no federation|is empty"),  # every frame lost: the database looks new
    ((0.8, 1.0), "older than the trail|removed from the end"),  # the last frames: rounds lost
], ids=["whole WAL garbled", "last WAL frames garbled"])
def test_resume_refuses_a_garbled_write_ahead_log(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  part: tuple[float, float], message: str):
    """Attacker: a failing disk. SQLite drops a WAL frame whose checksum fails without a word: the
    rounds in it vanish; the database looks new or older, which the audit trail's head exposes."""
    made = crash_snapshot(tmp_path)
    wal = made.state / "medfed.sqlite-wal"
    assert wal.stat().st_size > 0
    garble(wal, *part)
    status, err = server(made, capsys, "--resume")
    assert status == 2 and re.search(message, err), err


def test_a_database_older_than_the_audit_trail_is_refused(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture):
    """Attacker: an insider who puts back an older medfed.sqlite to undo a round."""
    made = make_state(tmp_path, rounds=1)
    shutil.copy(database(made), tmp_path / "old.sqlite")
    store, audit = open_state(made.state, made.certs, resume=True)
    commit_round(store, audit, 1)
    store.close()
    shutil.copy(tmp_path / "old.sqlite", database(made))
    status, err = server(made, capsys, "--resume")
    assert status == 2 and "does not agree with the state" in err and "older than the trail" in err
