"""A site's log: every line to the terminal and to STATE/site.log (owner-only), time-stamped in the
file, so a hospital's IT team can read later what the site did: which federation, each round's
training and what it sent, its evaluations, connection problems."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


class SiteLog:
    def __init__(self, site: str, path: Path | None) -> None:
        self.site, self.path = site, path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def say(self, text: str) -> None:
        line = f"medfed client {self.site}: {text}\n"
        sys.stderr.write(line)
        sys.stderr.flush()
        if self.path is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {text}\n")
