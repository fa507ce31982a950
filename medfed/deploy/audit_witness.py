"""Copies of the audit trail's signed head kept by the sites: what shows an insider who rolled back
both the trail and the state database to an earlier signed head.

The server sends its latest head with every model it sends (the task option `audit_head`: the
trail's identity, which is the hash of its first record, and the head's seq, hash and signature).
Each site appends the heads it is given to `audit-witness.jsonl` in its own state folder (0600),
which the server's insiders cannot write. `medfed audit verify --witness FILE` then checks every
head a site kept for this trail:

- signed by the server's key (a head that is not is reported and ignored: it proves nothing, and
  a site must not be able to frame the server with a made-up head);
- the trail still has record `seq` (else records were cut, even if the database agrees), and that
  record's hash is the one the site saw (else the trail was rewritten and re-signed from an older
  state, or the key was misused).

The site does not check the head when it receives it (it may not hold the server's audit key); a
missing or malformed head from the server is skipped: the witness is evidence, never a reason to
stop training.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfed.deploy.signatures import PublicKey, signed_by
from medfed.errors import StateError

AUDIT_HEAD = "audit_head"  # the task option that carries the head to the site
WITNESS_FILE = "audit-witness.jsonl"
_HEX = re.compile(r"[0-9a-f]{64}")
MAX_SIG = 1024  # characters of a base64 signature (RSA-4096 is 684)


@dataclass(frozen=True)
class WitnessHead:
    trail: str  # the hash of the trail's first record: which trail this head belongs to
    seq: int
    hash: str
    sig: str

    @classmethod
    def parse(cls, raw: Any) -> WitnessHead | None:
        """The head if raw is one (bounded, hex where hex is due), else None."""
        if not isinstance(raw, dict):
            return None
        trail, seq, digest, sig = raw.get("trail"), raw.get("seq"), raw.get("hash"), raw.get("sig")
        if not (isinstance(trail, str) and _HEX.fullmatch(trail) and isinstance(digest, str)
                and _HEX.fullmatch(digest) and isinstance(seq, int) and not isinstance(seq, bool)
                and 0 < seq < 1 << 62 and isinstance(sig, str) and len(sig) <= MAX_SIG):
            return None
        return cls(trail, seq, digest, sig)

    def to_json(self) -> dict[str, Any]:
        return {"trail": self.trail, "seq": self.seq, "hash": self.hash, "sig": self.sig}


class Witness:
    """A site's copy of the heads it was sent; one line per new head."""

    def __init__(self, state: Path) -> None:
        self.path = state / WITNESS_FILE
        self._latest: dict[str, int] = {}

    def keep(self, raw: Any) -> bool:
        """Append raw if it is a head newer than the last one kept of its trail."""
        head = WitnessHead.parse(raw)
        if head is None or head.seq <= self._latest.get(head.trail, 0):
            return False
        line = json.dumps(head.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line)
        self._latest[head.trail] = head.seq
        return True


def read_witness(path: Path) -> list[WitnessHead]:
    """The heads a site kept (lines that are not heads are skipped: a torn last line)."""
    if not path.is_file():
        raise StateError(f"no witness file {path} (a site keeps it as {WITNESS_FILE} in its "
                         "state folder)")
    heads = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            head = WitnessHead.parse(json.loads(line))
        except ValueError:
            continue
        if head is not None:
            heads.append(head)
    return heads


@dataclass(frozen=True)
class WitnessCheck:
    broken: str = ""  # why the trail disagrees with what the site saw ("" when it agrees)
    note: str = ""


def check_witness(path: Path, records: list[dict[str, Any]], key: PublicKey | None
                  ) -> WitnessCheck:
    """The trail's records (already chained and checked) against one site's heads."""
    if not records:
        return WitnessCheck(f"the trail is empty but {path} holds heads of a trail")
    mine = [h for h in read_witness(path) if h.trail == records[0]["hash"]]
    if not mine:
        return WitnessCheck(note=f"{path.name}: no head of this trail")
    trusted = [h for h in mine if key is not None and signed_by(key, h.hash, h.sig)]
    unsigned = len(mine) - len(trusted)
    for head in trusted:
        if head.seq > len(records):
            return WitnessCheck(f"{path} holds the server's signed head {head.seq} but the trail "
                                f"has {len(records)} records: records were cut (and the state "
                                "database rolled back with them)")
        if records[head.seq - 1]["hash"] != head.hash:
            return WitnessCheck(f"record {head.seq} is not the one {path} was sent as the "
                                "server's signed head: the trail was rewritten")
    latest = max((h.seq for h in trusted), default=0)
    note = f"{path.name}: {len(trusted)} signed heads agree (latest {latest})"
    if unsigned:
        note += (f"; {unsigned} heads ignored: " +
                 ("no key to check them (give --cert or --state)" if key is None
                  else "not signed by the server's key"))
    return WitnessCheck(note=note)
