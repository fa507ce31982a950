"""A site's privacy ledger: every DP-SGD step it has taken on its data, kept in its state folder.

Privacy loss composes over everything released from the same patients, whichever federation or
job asked for it, so the ledger is one accountant history (Opacus' RDP history entries: noise
multiplier, sample rate, steps) for the site's whole life. A deployed site loads it before it
trains, continues its epsilon from it, refuses to train past its budget, and writes it (atomically,
owner-only) before an update leaves the site: a crash can lose an update, never a record of what
was spent. An unreadable ledger stops the site: it never trains without knowing what it spent.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from medfed.errors import ConfigError
from medfed.privacy.dp_sgd import epsilon_after

History = list[tuple[float, float, int]]
NAME = "privacy-ledger.json"


class PrivacyLedger:
    def __init__(self, folder: Path) -> None:
        self.path = folder / NAME

    def history(self) -> History:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [(float(s), float(q), int(n)) for s, q, n in raw["history"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the privacy ledger {self.path} is unreadable ({type(exc).__name__}); "
                              "this site will not train without knowing what it has spent: restore "
                              "it from a backup") from None

    def record(self, history: History, delta: float) -> float:
        """Write the whole history (it only grows); returns epsilon at delta."""
        spent = epsilon_after(history, delta)
        body = {"history": [list(h) for h in history], "delta": delta, "epsilon": spent,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return spent
