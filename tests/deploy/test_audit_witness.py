"""The sites' copies of the audit trail's signed head against an insider who can write the whole
server state folder (trail and database) but not the sites' folders: rolling both back to an
earlier signed head, or rewriting the trail with the server's key and moving the database to
match, verifies as ok without witnesses and is detected with them. A site cannot frame the server
with a head the server never signed.

Hand mutations that make these tests fail (each tried once):
- `check_witness` skipping the length check: the rollback verifies as ok with the witness;
- `check_witness` skipping the hash comparison: the re-signed rewrite verifies as ok;
- witness heads trusted without their signature: the made-up head breaks an intact trail.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from medfed.cli import main
from medfed.deploy.audit_witness import WITNESS_FILE, Witness, WitnessHead, read_witness
from medfed.deploy.signatures import load_private_key
from tests.deploy.test_audit import move_head, rechain, write_lines
from tests.deploy.trails import Made, commit_round, make_state, open_state


def keep_head(made: Made, site_state: Path) -> Witness:
    """What a site keeps when the server sends a model: the trail's current signed head."""
    store, audit = open_state(made.state, made.certs, resume=True)
    try:
        witness = Witness(site_state)
        assert witness.keep(audit.witness_head())
    finally:
        store.close()
    return witness


def verify(made: Made, capsys: pytest.CaptureFixture, *witnesses: Path) -> tuple[int, str]:
    capsys.readouterr()
    args = [a for w in witnesses for a in ("--witness", str(w))]
    status = main(["audit", "verify", str(made.audit), "--state", str(made.state), *args])
    return status, capsys.readouterr().out.strip()


@pytest.fixture
def made(tmp_path: Path) -> Made:
    return make_state(tmp_path, rounds=2)


def test_a_site_keeps_each_new_head_once_in_a_private_file(made: Made, tmp_path: Path):
    site = tmp_path / "site-a"
    witness = keep_head(made, site)
    head = json.loads(made.lines()[-1])
    assert not witness.keep({"trail": read_witness(site / WITNESS_FILE)[0].trail,
                             "seq": head["seq"], "hash": head["hash"], "sig": head["sig"]})
    kept = read_witness(site / WITNESS_FILE)
    assert [(h.seq, h.hash) for h in kept] == [(head["seq"], head["hash"])]
    assert kept[0].trail == json.loads(made.lines()[0])["hash"]
    assert os.stat(site / WITNESS_FILE).st_mode & 0o777 == 0o600
    for bad in (None, [], {"seq": 1}, {"trail": "x" * 64, "seq": 1, "hash": "0" * 64, "sig": ""},
                {"trail": "0" * 64, "seq": True, "hash": "0" * 64, "sig": ""},
                {"trail": "0" * 64, "seq": 5, "hash": "0" * 64, "sig": "A" * 5000}):
        assert WitnessHead.parse(bad) is None and not witness.keep(bad)


def test_state_rolled_back_to_an_earlier_signed_head_is_caught_only_by_a_witness(
        made: Made, tmp_path: Path, capsys: pytest.CaptureFixture):
    """Attacker: an insider who puts back yesterday's whole state folder (trail and database
    agree with each other; every record is signed). Only a site's copy shows the lost round."""
    shutil.copytree(made.state, tmp_path / "yesterday")
    store, audit = open_state(made.state, made.certs, resume=True)
    commit_round(store, audit, 2)
    store.close()
    witness = keep_head(made, tmp_path / "site-a").path
    assert verify(made, capsys, witness)[0] == 0
    shutil.rmtree(made.state)
    shutil.copytree(tmp_path / "yesterday", made.state)
    status, out = verify(made, capsys)
    assert status == 0  # trail and database agree: without a witness the rollback is invisible
    status, out = verify(made, capsys, witness)
    assert status == 1 and "records were cut" in out, out


def test_a_trail_rewritten_and_resigned_with_the_servers_key_is_caught_by_a_witness(
        made: Made, tmp_path: Path, capsys: pytest.CaptureFixture):
    """Attacker: an insider who got hold of server.key for a while: edits a sample count,
    re-chains and re-signs every record, and moves the database's head to match."""
    witness = keep_head(made, tmp_path / "site-a").path
    records = [json.loads(line) for line in made.lines()]
    records[-1]["note"] = "rewritten"  # the record the site saw as the head
    lines = rechain(records, load_private_key(made.certs / "server.key"))
    write_lines(made.audit, lines)
    move_head(made, lines[-1])
    assert verify(made, capsys)[0] == 0
    status, out = verify(made, capsys, witness)
    assert status == 1 and "the trail was rewritten" in out, out


def test_a_head_the_server_never_signed_cannot_frame_it(made: Made, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture):
    """Attacker: a site that writes a head of its own making into its witness file."""
    witness = keep_head(made, tmp_path / "site-a")
    trail = read_witness(witness.path)[0].trail
    assert witness.keep({"trail": trail, "seq": 999, "hash": "ab" * 32, "sig": "bm90IGEgc2ln"})
    status, out = verify(made, capsys, witness.path)
    assert status == 0 and "1 signed heads agree" in out and "1 heads ignored" in out, out


def test_a_missing_witness_file_is_one_line_and_status_2(made: Made, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture):
    assert main(["audit", "verify", str(made.audit), "--witness", str(tmp_path / "nope")]) == 2
    assert "no witness file" in capsys.readouterr().err
