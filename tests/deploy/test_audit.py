"""The audit chain: appended records verify; editing, removing or inserting a line is found."""

from __future__ import annotations

import json
from pathlib import Path

from medfed.deploy.audit import AuditLog, verify


def written(tmp_path: Path, n: int = 5) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl")
    for k in range(n):
        log.record("update_received", site=f"site-{k}", round=1, n_samples=10 + k)
    return log.path


def test_a_written_chain_verifies_and_reopening_continues_it(tmp_path: Path):
    path = written(tmp_path, 3)
    AuditLog(path).record("round_closed", round=1)
    assert verify(path).ok
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_an_edited_line_is_named(tmp_path: Path):
    path = written(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"n_samples":12', '"n_samples":99')
    path.write_text("\n".join(lines) + "\n")
    verdict = verify(path)
    assert not verdict.ok and verdict.line == 3 and "edited" in verdict.reason


def test_a_removed_or_inserted_line_breaks_the_chain(tmp_path: Path):
    path = written(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert verify(path).line == 2
    path.write_text("\n".join(lines[:2] + [lines[0]] + lines[2:]) + "\n")
    assert not verify(path).ok
    path.write_text("\n".join(lines[:-1]) + "\nnot json\n")
    assert verify(path).line == 5


def test_a_recomputed_hash_still_breaks_the_link_to_the_next_line(tmp_path: Path):
    from medfed.deploy.audit import _canonical, _sha256

    path = written(tmp_path)
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["n_samples"] = 1
    record["hash"] = _sha256(_canonical(record))
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    assert verify(path).line == 3
