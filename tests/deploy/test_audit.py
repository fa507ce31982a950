"""The audit trail against an insider who can write the state folder but does not hold server.key:
every way to rewrite it seen in issue 19 is detected by `medfed audit verify`; what a crash leaves
(a torn last line, a round committed but not audited) is detected, and repaired on --resume; a
flood of refusals writes a bounded number of lines, and names are bounded.

Hand mutations that make these tests fail (each tried once):
- signature unchecked (`signed_by` returns True): the forged line, the re-chained deletion and the
  trail re-signed with a site's key (both with the database rewritten to match) verify as ok;
- head not compared with the database (`_check_head` returns None): cutting one or five lines,
  keeping line 1 and emptying the file verify as ok;
- the head never stored in the database (AuditLog without on_head): the intact trail fails to
  verify (and every rewriting test fails with it);
- committed rounds not compared with round_closed (`round_gaps` returns no gaps): the crash
  between commit and audit verifies as ok and is not repaired;
- the torn tail ignored by `check`: the torn-line test verifies as ok;
- the refusal gate admitting everything: the flood test writes 5,000 lines.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from medfed.cli import main
from medfed.deploy.audit import AuditLog, RefusalGate, canonical, sha256
from medfed.deploy.audit_verify import verify
from medfed.deploy.signatures import load_private_key, sign
from medfed.errors import MedfedError, StateError
from tests.deploy.trails import Made, commit_round, make_state, open_state, server_certs


def rechain(records: list[dict], key=None) -> list[str]:
    """The records as lines with seq, prev and hash recomputed, re-signed with key if one is given
    (else each keeps its old signature)."""
    lines, prev = [], "0" * 64
    for seq, old in enumerate(records, start=1):
        record = {k: v for k, v in old.items() if k not in ("hash", "sig")}
        record |= {"seq": seq, "prev": prev}
        record["hash"] = sha256(canonical(record))
        record["sig"] = sign(key, record["hash"]) if key is not None else old.get("sig", "")
        line = json.dumps(record, sort_keys=True, separators=(",", ":"))
        lines.append(line)
        prev = sha256(line.encode())
    return lines


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def move_head(made: Made, last_line: str, drop_round: int | None = None) -> None:
    """The insider also rewrites the state database: its head now names the trail's new last
    record (with that record's signature, whatever it is), and a round disappears with its record."""
    record = json.loads(last_line)
    with sqlite3.connect(made.state / "medfed.sqlite") as db:
        db.execute("UPDATE audit_head SET seq = ?, hash = ?, sig = ?",
                   (record["seq"], record["hash"], record.get("sig", "")))
        if drop_round is not None:
            db.execute("DELETE FROM rounds WHERE round = ?", (drop_round - 1,))
    db.close()


def forge_append(made: Made) -> None:
    """A stranger's connection that never happened, correctly chained, with a real signature
    copied from another record (the database's head may lag one record after a crash)."""
    lines = made.lines()
    last = json.loads(lines[-1])
    forged = {"seq": last["seq"] + 1, "time": last["time"], "event": "site_connected",
              "site": "site-x", "peer": "ipv4:10.9.9.9:1", "prev": sha256(lines[-1].encode())}
    forged["hash"] = sha256(canonical(forged))
    forged["sig"] = last["sig"]
    write_lines(made.audit, lines + [json.dumps(forged, sort_keys=True, separators=(",", ":"))])


def delete_round_closed_and_rechain(made: Made) -> None:
    """Round 2 erased: its round_closed removed, the rest re-chained (old signatures kept), the
    database's head and its round 2 rewritten to match."""
    records = [json.loads(line) for line in made.lines()]
    middle = next(i for i, r in enumerate(records) if r["event"] == "round_closed" and r["round"] == 2)
    kept = records[:middle] + records[middle + 1:]
    lines = rechain(kept)
    write_lines(made.audit, lines)
    move_head(made, lines[-1], drop_round=2)


def resign_with_a_site_key(made: Made) -> None:
    """An insider holding a site's key (a certificate of the same authority) edits a sample count,
    re-chains and re-signs every record, and moves the database's head to match."""
    records = [json.loads(line) for line in made.lines()]
    records[3]["n_samples"] = 10**6
    lines = rechain(records, load_private_key(made.certs / "site-a.key"))
    write_lines(made.audit, lines)
    move_head(made, lines[-1])


TAMPERING = {
    "last line deleted": lambda m: write_lines(m.audit, m.lines()[:-1]),
    "last five lines deleted": lambda m: write_lines(m.audit, m.lines()[:-5]),
    "only line 1 kept": lambda m: write_lines(m.audit, m.lines()[:1]),
    "file emptied": lambda m: m.audit.write_bytes(b""),
    "forged line appended, correctly chained": forge_append,
    "a middle round_closed deleted, re-chained, the database to match": delete_round_closed_and_rechain,
    "a record edited, re-chained, re-signed with a site's key, the database to match":
        resign_with_a_site_key,
}


def verify_cli(made: Made, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["audit", "verify", str(made.audit), *extra])
    return status, capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make_state(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def made(pristine: Made, tmp_path: Path) -> Made:
    """A fresh copy of a real state folder (3 committed, audited rounds, signed trail)."""
    import shutil

    shutil.copytree(pristine.state, tmp_path / "state")
    shutil.copytree(pristine.certs, tmp_path / "certs")
    return Made(tmp_path / "state", tmp_path / "certs")


def test_an_intact_trail_verifies_with_its_signatures_and_head(made: Made,
                                                               capsys: pytest.CaptureFixture):
    status, out = verify_cli(made, capsys, "--cert", str(made.certs / "server.crt"))
    assert status == 0 and out.startswith("ok: ") and "signed by the server's key" in out
    assert "reaches the state database's head" in out
    assert verify_cli(made, capsys)[0] == 0  # --state is the file's folder; the key its database's


@pytest.mark.parametrize("with_cert", [True, False], ids=["--cert", "key-from-state"])
@pytest.mark.parametrize("tamper", list(TAMPERING), ids=list(TAMPERING))
def test_each_rewriting_of_the_trail_is_detected(made: Made, capsys: pytest.CaptureFixture,
                                                 tamper: str, with_cert: bool):
    """Attacker: an insider with write access to the state folder (not to server.key)."""
    assert verify_cli(made, capsys)[0] == 0
    TAMPERING[tamper](made)
    extra = ("--cert", str(made.certs / "server.crt")) if with_cert else ()
    status, out = verify_cli(made, capsys, "--state", str(made.state), *extra)
    assert status == 1 and out.startswith("broken"), out
    with pytest.raises(StateError, match="does not agree with the state"):
        open_state(made.state, made.certs, resume=True)  # and the server refuses to continue it


def test_a_torn_last_line_is_reported_then_truncated_and_audited_on_resume(
        made: Made, capsys: pytest.CaptureFixture):
    """Attacker: none; a crash while the last record was written (the disk kept half of it)."""
    whole = made.audit.read_bytes()
    made.audit.write_bytes(whole + b'{"seq":99,"time":"2026-')
    status, out = verify_cli(made, capsys)
    assert status == 1 and "incomplete last line" in out and "--resume" in out
    with pytest.raises(MedfedError, match="--resume"):
        open_state(made.state, made.certs)
    store, audit = open_state(made.state, made.certs, resume=True)
    store.close()
    records = [json.loads(line) for line in made.lines()]
    assert made.audit.read_bytes().startswith(whole)
    repaired = [r for r in records if r["event"] == "audit_repaired"]
    assert len(repaired) == 1 and repaired[0]["removed_bytes"] == 23
    assert verify_cli(made, capsys, "--cert", str(made.certs / "server.crt"))[0] == 0


def test_a_crash_between_a_rounds_commit_and_its_audit_record_is_found_and_repaired(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """Attacker: none; the server died after committing round 3 and before auditing it."""
    made = make_state(tmp_path, rounds=3, last_audited=False)
    status, out = verify_cli(made, capsys)
    assert status == 1 and "round 3 is committed" in out and "never closes it" in out
    store, audit = open_state(made.state, made.certs, resume=True)
    store.close()
    closed = [json.loads(line) for line in made.lines() if '"round_closed"' in line]
    assert [r["round"] for r in closed] == [1, 2, 3] and "recovered" in closed[-1]
    assert verify_cli(made, capsys)[0] == 0


def test_a_record_written_just_before_a_crash_is_ahead_of_the_head_by_one(
        made: Made, capsys: pytest.CaptureFixture):
    """Attacker: none. The database's head lags one record (the crash came between the two
    writes); that is accepted, two records ahead is a database older than the trail."""
    log = AuditLog(made.audit, load_private_key(made.certs / "server.key"))  # no head update
    log.record("site_connected", site="site-a", peer="ipv4:127.0.0.1:1")
    status, out = verify_cli(made, capsys)
    assert status == 0 and "follows the database's head" in out
    log.record("site_connected", site="site-b", peer="ipv4:127.0.0.1:2")
    status, out = verify_cli(made, capsys)
    assert status == 1 and "older than the trail" in out


def test_a_state_database_replaced_by_an_older_copy_is_detected(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture):
    """Attacker: an insider who puts back yesterday's medfed.sqlite (one round fewer)."""
    import shutil

    made = make_state(tmp_path, rounds=1)
    shutil.copy(made.state / "medfed.sqlite", tmp_path / "old.sqlite")
    store, audit = open_state(made.state, made.certs, resume=True)
    commit_round(store, audit, 1)
    store.close()
    shutil.copy(tmp_path / "old.sqlite", made.state / "medfed.sqlite")
    status, out = verify_cli(made, capsys)
    assert status == 1 and "older than the trail" in out


def test_an_insecure_servers_trail_says_it_is_unsigned(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture):
    made = make_state(tmp_path, rounds=1, signed=False)
    status, out = verify_cli(made, capsys)
    assert status == 0 and "UNSIGNED" in out and "--insecure" in out
    with pytest.raises(StateError, match="unsigned"):  # nor can it be continued with a key
        open_state(made.state, server_certs(tmp_path / "c"), resume=True)
    # cut short, it is still caught by the database's head
    write_lines(made.audit, made.lines()[:-1])
    assert verify_cli(made, capsys)[0] == 1


def test_a_refusal_flood_writes_a_bounded_number_of_lines(tmp_path: Path):
    """Attacker: anyone who can reach the port (plain TCP, no certificate), 5,000 times in a
    minute, from new ports, then with ever new 3,000,000-character names."""
    now = [0.0]
    log = AuditLog(tmp_path / "audit.jsonl", gate=RefusalGate(clock=lambda: now[0]))
    for k in range(5000):
        log.record("auth_failed", peer=f"ipv4:10.0.0.5:{1024 + k}", reason="not TLS")
    for k in range(200):
        log.record("auth_failed", peer="ipv4:10.0.0.6:1", reason=f"'{k}{'x' * 3_000_000}' is "
                   "not a site of this federation")
    now[0] = 61.0
    log.record("auth_failed", peer="ipv4:10.0.0.5:9", reason="not TLS")
    lines = log.path.read_text().splitlines()
    assert len(lines) <= 23 and max(len(line) for line in lines) < 20_000
    counted = [json.loads(line) for line in lines if '"refusals_suppressed"' in line]
    assert len(counted) == 1 and counted[0]["total"] == 5000 + 200 - 20
    assert len(counted[0]["counts"]) <= 50
    assert verify(log.path).ok


def test_a_legitimate_record_reports_the_refusals_counted_before_it(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for _ in range(3):
        log.record("auth_failed", peer="ipv4:10.0.0.5:1", reason="not TLS")
    log.record("round_started", round=1, sites=["a" * 10_000])
    events = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["auth_failed", "refusals_suppressed", "round_started"]
    assert events[1]["total"] == 2 and len(events[2]["sites"][0]) < 300


def test_an_edited_line_is_named(made: Made, capsys: pytest.CaptureFixture):
    lines = made.lines()
    lines[3] = lines[3].replace('"n_samples":40', '"n_samples":99')
    write_lines(made.audit, lines)
    status, out = verify_cli(made, capsys)
    assert status == 1 and out.startswith("broken at line 4") and "edited" in out
