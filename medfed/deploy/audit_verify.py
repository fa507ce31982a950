"""Checking an audit trail against its signatures and the state database's head, and reopening
it on the server (repairing what a crash can leave, refusing anything else).

What `check` finds, and why it cannot be hidden without the server's key:
- a line edited, inserted or removed: its hash, or the next line's `prev`, no longer matches;
- a line forged or the trail re-chained after a deletion: the new hashes carry no valid signature;
- lines cut from the end, the file emptied or replaced by an older copy: the trail no longer reaches
  the database's head (the record count and hash stored with every record);
- a database older than the trail (replaced, rolled back, a lost write-ahead log): more than one
  record after its head (only the record being written at a crash can be ahead of it);
- a crash between a round's commit and its `round_closed` record: a committed round the trail
  never closes (`round_gaps`; `--resume` writes the missing record, marked recovered).
A torn last line (a crash mid-write) is reported; `open_trail` with resume truncates it to the
last complete record and audits the repair (`audit_repaired`).

An insider who can write both the trail and the database can still cut both back to an earlier
signed head consistently; only copies of the head kept elsewhere show that: the sites keep every
head they are sent (deploy/audit_witness.py), checked with `verify(..., witnesses=...)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfed.deploy.audit import GENESIS, AuditLog, canonical, sha256
from medfed.deploy.audit_witness import check_witness
from medfed.deploy.signatures import PrivateKey, PublicKey, public_from_pem, public_pem, signed_by
from medfed.deploy.state import AuditAnchor, AuditHead, StateStore
from medfed.errors import StateError

RESUME_REPAIRS = "`medfed server --resume` repairs it"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: int = 0  # the first broken line (1-based); 0 when the break is not one line's
    reason: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trail:
    lines: list[bytes]  # the complete lines, without their newline
    torn: bytes = b""  # what follows the last newline (a line cut short by a crash)
    records: list[dict[str, Any]] = field(default_factory=list)  # filled by check


def read_trail(path: Path) -> Trail:
    data = path.read_bytes() if path.exists() else b""
    complete, _, torn = data.rpartition(b"\n")
    return Trail(complete.split(b"\n") if complete or data.startswith(b"\n") else [], torn)


def check(trail: Trail, key: PublicKey | None, anchor: AuditAnchor | None) -> Verdict:
    """Records (chain, sequence, signatures), then the torn tail, then the database's head."""
    broken = _check_records(trail, key)
    if broken is None and trail.torn:
        broken = Verdict(False, len(trail.lines) + 1, "incomplete last line (torn by a crash "
                         f"while it was written); {RESUME_REPAIRS}")
    if broken is None and anchor is not None:
        broken = _check_head(trail.records, anchor, key)
    return broken or Verdict(True)


def round_gaps(records: list[dict[str, Any]], rounds: dict[int, str]
               ) -> tuple[Verdict | None, list[int]]:
    """A round_closed that contradicts the database (a Verdict), and the committed rounds the
    trail never closes (a crash between the commit and the record)."""
    closed: dict[int, int] = {}
    for number, record in enumerate(records, start=1):
        if record.get("event") != "round_closed":
            continue
        r = record.get("round")
        if r in closed:
            return Verdict(False, number, f"closes round {r} a second time"), []
        if r not in rounds or record.get("aggregate_sha256") != rounds[r]:
            return Verdict(False, number, f"closes round {r}, which the state database does not "
                           "hold with this checkpoint"), []
        closed[r] = number
    return None, sorted(set(rounds) - set(closed))


def _check_records(trail: Trail, key: PublicKey | None) -> Verdict | None:
    prev, seen_sig = GENESIS, False
    trail.records.clear()
    for number, line in enumerate(trail.lines, start=1):
        try:
            entry = json.loads(line)
            claimed = entry["hash"]
            content = canonical(entry)
        except (ValueError, KeyError, TypeError):
            return Verdict(False, number, "not a JSON audit record")
        if sha256(content) != claimed:
            return Verdict(False, number, "content does not match its hash (edited)")
        if entry.get("prev") != prev or entry.get("seq") != number:
            return Verdict(False, number, "does not follow the line before (removed or inserted)")
        if key is not None and "sig" not in entry:
            return Verdict(False, number, "the record is not signed (the server's key signs every record)")
        if key is not None and not signed_by(key, claimed, entry["sig"]):
            return Verdict(False, number, "the record's signature is not the server's (forged or re-signed)")
        if seen_sig and "sig" not in entry:
            return Verdict(False, number, "the record is unsigned after signed records (written "
                           "without the server's key)")
        seen_sig = seen_sig or "sig" in entry
        trail.records.append(entry)
        prev = sha256(line)
    return None


def _check_head(records: list[dict[str, Any]], anchor: AuditAnchor,
                key: PublicKey | None) -> Verdict | None:
    head, last = anchor.head, len(records)
    if head is None:
        return Verdict(False, 1, f"the state database knows no audit record but the trail has "
                       f"{last}: the database is not this trail's") if last else None
    if key is not None and not signed_by(key, head.hash, head.sig):
        return Verdict(False, 0, "the state database's audit head is not signed by the server")
    if last < head.seq:
        return Verdict(False, last + 1, f"the trail ends at record {last} but the state "
                       f"database's head is record {head.seq}: records were removed from the end")
    if head.seq and records[head.seq - 1]["hash"] != head.hash:
        return Verdict(False, head.seq, "the record is not the one the state database holds as "
                       "its head (the trail was rewritten)")
    if last > head.seq + 1:
        return Verdict(False, head.seq + 2, f"{last - head.seq} records follow the state "
                       f"database's head (record {head.seq}); only one can (written at a crash): "
                       "the database is older than the trail (replaced or rolled back?)")
    return None


def open_trail(path: Path, store: StateStore, key: PrivateKey | None, resume: bool) -> AuditLog:
    """The server's audit log over a checked trail: a torn last line is truncated on resume, a
    record written just before a crash becomes the head, committed rounds the trail never closed
    are recorded (marked recovered); anything else is refused with one line."""
    anchor = store.anchor()
    public = _trail_key(path, anchor, key)
    trail, repairs = read_trail(path), []
    if trail.torn and resume:
        repairs.append(_truncate(path, trail))
        trail = Trail(trail.lines)
    verdict = check(trail, public, anchor)
    gap_verdict, missing = round_gaps(trail.records, anchor.rounds)
    verdict = verdict if not verdict.ok else gap_verdict or verdict
    if not verdict.ok:
        where = f"line {verdict.line}" if verdict.line else "its head"
        todo = "start with --resume to repair it" if RESUME_REPAIRS in verdict.reason else (
            "keep the folder for investigation and start a new federation in a new --state folder")
        raise StateError(f"the audit trail {path} does not agree with the state: broken at "
                         f"{where}: {verdict.reason.removesuffix('; ' + RESUME_REPAIRS)}; {todo}")
    if missing and not resume:
        raise StateError(f"round {missing[0]} is committed but {path} never closes it (a crash "
                         "between the two); start with --resume to record it")
    store.put("audit_key", public_pem(key) if key is not None else "")
    if trail.records and (anchor.head is None or anchor.head.seq < len(trail.records)):
        last = trail.records[-1]
        store.set_audit_head(AuditHead(last["seq"], last["hash"], last.get("sig", "")))
    log = AuditLog(path, key, on_head=store.set_audit_head)
    for fields in repairs:
        log.record("audit_repaired", **fields)
    _record_missing_rounds(log, store, missing)
    return log


def _trail_key(path: Path, anchor: AuditAnchor, key: PrivateKey | None) -> PublicKey | None:
    """The key the trail is checked with: the server's, which must be the one that signed it."""
    ours = public_pem(key) if key is not None else ""
    if anchor.key_pem is not None and anchor.key_pem != ours:
        was = "signed with another key" if anchor.key_pem else "unsigned (--insecure)"
        now = "with server.key" if key is not None else "with --insecure"
        raise StateError(f"{path} was written {was}; it cannot be continued {now}: run the server "
                         "as it ran before, or start a new federation in a new --state folder")
    return public_from_pem(ours) if key is not None else None


def _truncate(path: Path, trail: Trail) -> dict[str, Any]:
    keep = sum(len(line) + 1 for line in trail.lines)
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return {"reason": "incomplete last line (a crash while it was written) removed",
            "removed_bytes": len(trail.torn), "removed_sha256": sha256(trail.torn),
            "after_record": len(trail.lines)}


def _record_missing_rounds(log: AuditLog, store: StateStore, missing: list[int]) -> None:
    rounds = {h["round"]: h for h in store.history()}
    digests = store.anchor().rounds
    for r in missing:
        result = rounds.get(r, {})
        log.record("round_closed", round=r, aggregated=result.get("sites", []),
                   left_out=sorted(result.get("failed") or {}),
                   aggregation=result.get("aggregation"), aggregate_sha256=digests[r],
                   recovered="committed before a crash; recorded on resume")


def verify(path: Path, key: PublicKey | None = None, anchor: AuditAnchor | None = None,
           witnesses: tuple[Path, ...] = ()) -> Verdict:
    """`medfed audit verify`: the trail checked with key and against anchor (each optional), its
    committed rounds all closed, and against the heads the sites kept (witnesses); notes say what
    was and was not checked."""
    if not path.is_file():
        raise StateError(f"no audit trail {path}")
    trail = read_trail(path)
    verdict = check(trail, key, anchor)
    if verdict.ok and anchor is not None:
        verdict, missing = round_gaps(trail.records, anchor.rounds)
        if verdict is None and missing:
            verdict = Verdict(False, 0, f"round {missing[0]} is committed in the state database "
                              "but the trail never closes it (a crash between the commit and its "
                              f"record); {RESUME_REPAIRS}")
    if verdict is not None and not verdict.ok:
        return verdict
    seen = [check_witness(w, trail.records, key) for w in witnesses]
    for result in seen:
        if result.broken:
            return Verdict(False, 0, result.broken)
    return Verdict(True, notes=_notes(trail, key, anchor) + tuple(r.note for r in seen))


def _notes(trail: Trail, key: PublicKey | None, anchor: AuditAnchor | None) -> tuple[str, ...]:
    n, signed = len(trail.records), any("sig" in r for r in trail.records)
    notes = [f"{n} records, chain intact"]
    if key is not None:
        notes.append("every record signed by the server's key")
    elif n and not signed:
        notes.append("UNSIGNED: the server ran without a key (--insecure), so anyone who can "
                     "write the state folder could have rewritten the trail")
    elif signed:
        notes.append("signatures NOT checked: give --cert server.crt (or --state)")
    if anchor is None:
        notes.append("not compared with a state database (give --state): records cut from the "
                     "end would go unnoticed")
    elif anchor.head is not None and len(trail.records) > anchor.head.seq:
        notes.append(f"record {n} follows the database's head (written at a crash; --resume "
                     "takes it)")
    else:
        notes.append("it reaches the state database's head")
    return tuple(notes)
