"""Refused TLS handshakes, into the audit trail.

gRPC does TLS in its C core: a client whose certificate is missing or not signed by the federation's
authority is refused during the handshake and never reaches Python code. The only trace is a line
the core logs ("Handshake failed with error ..."), at INFO level, without the peer's address. So the
server runs with GRPC_VERBOSITY=INFO and reads its own stderr through a pipe: those lines become
`auth_failed` audit records; gRPC's other INFO lines are dropped; everything else passes through.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable

HANDSHAKE = re.compile(rb"Handshake failed with error (\S+): (.*)")
GRPC_INFO = re.compile(rb"^I\d{4} |Log level INFO is not suitable for production")
REASONS = {
    b"PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    b"BAD_SIGNATURE": "certificate not signed by the federation's authority",
    b"CERTIFICATE_VERIFY_FAILED": "certificate not signed by the federation's authority",
    b"WRONG_VERSION_NUMBER": "not TLS (a client without TLS)",
    b"CERTIFICATE_EXPIRED": "certificate expired",
}


def reason_of(line: bytes) -> str | None:
    """The audit reason of a gRPC log line about a refused handshake, or None."""
    match = HANDSHAKE.search(line)
    if match is None:
        return None
    detail = match.group(2)
    for marker, reason in REASONS.items():
        if marker in detail:
            return reason
    return "TLS handshake failed: " + detail.decode(errors="replace").strip()[:200]


class HandshakeWatch:
    """Redirects fd 2 through a pipe while the server runs; stop() restores it."""

    def __init__(self, audit: Callable[..., None]) -> None:
        self.audit = audit
        self._saved = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Before the process's first gRPC server or channel: gRPC's core reads its verbosity then
        (importing grpc is fine, and leaves out gRPC's warning about INFO logs)."""
        os.environ["GRPC_VERBOSITY"] = "INFO"
        sys.stderr.flush()
        read, write = os.pipe()
        self._saved = os.dup(2)
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True,
                                        name="medfed-handshakes")
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe's last write end closes: the pump sees its end
        self._thread.join(timeout=5)
        os.close(self._saved)
        self._thread = None

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                reason = reason_of(line)
                if reason is not None:
                    self.audit("auth_failed", peer="unknown (refused during the TLS handshake)",
                               reason=reason)
                elif not GRPC_INFO.search(line):
                    os.write(self._saved, line)
