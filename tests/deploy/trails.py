"""A real server state folder for the audit and state tests: opened as `medfed server` opens it
(server._open_state: locked, checked, its audit trail signed with server.key from `medfed certs`),
then rounds committed and audited as the round loop does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from medfed.deploy import certs
from medfed.deploy.server import ServerArgs, _open_state
from medfed.deploy.settings import load_federation
from medfed.server.round_loop import RoundResult

REPO = Path(__file__).resolve().parents[2]
FEDERATION = REPO / "examples" / "federation.toml"


@dataclass(frozen=True)
class Made:
    state: Path
    certs: Path

    @property
    def audit(self) -> Path:
        return self.state / "audit.jsonl"

    def lines(self) -> list[str]:
        return self.audit.read_text().splitlines()


def server_certs(folder: Path) -> Path:
    """The federation's CA, the server's certificate and key, and one site's (another key)."""
    if not (folder / "server.key").exists():
        certs.init_ca(folder)
        certs.issue(folder, "server")
        certs.issue(folder, "site-a")
    return folder


def open_state(state: Path, cert_folder: Path | None, resume: bool = False):
    federation = load_federation(FEDERATION)
    args = ServerArgs(FEDERATION, cert_folder, state, resume=resume, insecure=cert_folder is None)
    return _open_state(args, federation.config, federation.task)


def commit_round(store, audit, r: int, audited: bool = True) -> None:
    """Round r (from 0) as DeployObserver.round_finished records it; audited=False stops between
    the commit and the audit record (a crash there)."""
    audit.record("round_started", round=r + 1, sites=["site-a", "site-b"], connected=["site-a"])
    audit.record("update_received", site="site-a", round=r + 1, n_samples=40, bytes=10, sha256="0")
    result = RoundResult(round=r, sites=["site-a", "site-b"], failed={"site-c": "late"})
    digest = store.record_round(result, {"w": torch.full((2,), float(r))}, {"algorithm": "fedavg"})
    if audited:
        audit.record("round_closed", round=r + 1, aggregated=result.sites, left_out=["site-c"],
                     aggregation={}, aggregate_sha256=digest)


def make_state(tmp: Path, rounds: int = 3, signed: bool = True, last_audited: bool = True) -> Made:
    cert_folder = server_certs(tmp / "certs") if signed else None
    state = tmp / "state"
    store, audit = open_state(state, cert_folder)
    try:
        audit.record("server_started", address="127.0.0.1:50051", sites=["site-a"], tls=signed)
        for r in range(rounds):
            commit_round(store, audit, r, audited=last_audited or r < rounds - 1)
    finally:
        store.close()
    return Made(state, tmp / "certs")
