"""`medfed server` without --config: a long-running coordinator that runs submitted jobs.

It listens once (gRPC, mutual TLS) and serves two services on that port: the sites' Session
(deploy/server.py's federation machinery, for the running job) and the administrators' Admin
calls (deploy/admin.py). Jobs run one at a time, oldest first, each in its own state folder
(STATE/jobs/<id>/) with its own audit trail; the coordinator's own trail (STATE/coordinator/)
records submissions, starts, ends and aborts. Between jobs a site agent that connects is told to
wait (UNAVAILABLE), and a site not in the running job too; when a job ends its sites are told
goodbye, reconnect, and get the next job's welcome. A job aborted mid-round stops at once: its
sites are told goodbye, its pending work fails, and the next job starts.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from medfed.deploy.admin import ADMIN_PREFIX, AdminServicer
from medfed.deploy.audit import AuditLog
from medfed.deploy.audit_verify import open_trail
from medfed.deploy.certs import SERVER_NAME, load_identity
from medfed.deploy.handshakes import HandshakeWatch
from medfed.deploy.jobs import JobStore
from medfed.deploy.memory import limit_arenas
from medfed.deploy.server import (
    Federation,
    ServerArgs,
    close_federation,
    open_federation,
    run_federation,
    servicer_hooks,
)
from medfed.deploy.settings import load_federation_text
from medfed.deploy.signatures import load_private_key
from medfed.deploy.split_service import SplitService
from medfed.deploy.state import StateStore
from medfed.errors import JobAborted, MedfedError
from medfed.transport.admission import server_for
from medfed.transport.grpc_channel import allow_insecure, server_credentials
from medfed.transport.grpc_server import FederationServicer, SiteRegistry
from medfed.transport.proto import medfed_pb2 as pb

MAX_SITES = 64  # sessions the coordinator's server is sized for (admission.server_for)


@dataclass(frozen=True)
class CoordinatorArgs:
    certs: Path | None
    state: Path
    address: str
    insecure: bool = False


class JobServicer(FederationServicer):
    """The Session service of whichever job runs; between jobs, sites are told to wait."""

    def __init__(self, audit: AuditLog, insecure: bool) -> None:
        self.idle = SiteRegistry([], audit.record)
        super().__init__(self.idle, lambda site: pb.Welcome(), insecure=insecure)
        self.job: Federation | None = None

    def start(self, fed: Federation) -> None:
        hooks = servicer_hooks(fed)
        self.welcome, self.on_hello, self.admit = hooks["welcome"], hooks["on_hello"], hooks["admit"]
        self.registry, self.job = fed.transport.registry, fed

    def stop(self) -> None:
        self.registry, self.job = self.idle, None

    def session(self, requests: Iterator[bytes], context: grpc.ServicerContext
                ) -> Iterator[pb.ServerMessage]:
        names = context.auth_context().get("x509_common_name") or []
        name = names[0].decode(errors="replace") if names else ""
        if name.startswith(ADMIN_PREFIX):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "an administrator is never a site")
        if self.job is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no job is running; waiting for the next")
        if name and name not in self.registry.sites:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"site {name[:64]} is not in the running "
                                                       "job; waiting for the next")
        yield from super().session(requests, context)


class Coordinator:
    def __init__(self, args: CoordinatorArgs) -> None:
        self.args = args
        self.jobs = JobStore(args.state)
        folder = args.state / "coordinator"
        restarted = (folder / "medfed.sqlite").exists()
        self.store = StateStore(folder)  # holds the coordinator trail's signed head
        key = None if args.insecure else load_private_key((args.certs or Path()) / "server.key")
        self.audit = open_trail(folder / "audit.jsonl", self.store, key, restarted)
        self.sessions = JobServicer(self.audit, args.insecure)
        self.running: tuple[int, Federation] | None = None
        self.stopping = threading.Event()

    def abort(self, job_id: int) -> bool:
        """Stop the running job if it is job_id: its sites are told goodbye, its work fails."""
        running = self.running
        if running is None or running[0] != job_id:
            return False
        running[1].aborted.set()
        running[1].transport.finish("job aborted")
        return True

    def serve(self) -> int:
        credentials = None if self.args.insecure else server_credentials(
            load_identity(self.args.certs or Path(), SERVER_NAME))
        server = server_for(MAX_SITES)
        admin = AdminServicer(self.jobs, self.audit.record, self.abort)
        split = SplitService(lambda: self.running[1] if self.running else None, self.args.insecure)
        server.add_generic_rpc_handlers((self.sessions.handler(), admin.handler(), split.handler()))
        port = (server.add_insecure_port(self.args.address) if credentials is None
                else server.add_secure_port(self.args.address, credentials))
        server.start()
        self.audit.record("coordinator_started", address=self.args.address, port=port)
        _say(f"coordinator listening on {self.args.address}; `medfed job submit` queues jobs")
        try:
            while not self.stopping.is_set():
                job_id = self.jobs.next_to_run()
                if job_id is None:
                    self.stopping.wait(1.0)
                    continue
                self.run_job(job_id)
        finally:
            server.stop(grace=2).wait(5)
            self.audit.record("coordinator_stopped")
            self.store.close()
            self.jobs.close()
        return 0

    def run_job(self, job_id: int) -> None:
        folder = self.jobs.folder_of(job_id)
        args = ServerArgs(Path(), self.args.certs, folder, self.args.address,
                          resume=(folder / "medfed.sqlite").exists(), insecure=self.args.insecure)
        try:
            fed = open_federation(load_federation_text(self.jobs.config_of(job_id),
                                                       f"job {job_id}"), args)
        except MedfedError as exc:
            return self._ended(job_id, "failed", str(exc))
        self.jobs.set_status(job_id, "running")
        self.audit.record("job_started", job=job_id, sites=fed.sites)
        _say(f"job {job_id} started: {fed.config.federation.algorithm} with {', '.join(fed.sites)}")
        self.running = (job_id, fed)
        self.sessions.start(fed)
        try:
            summary = run_federation(fed)
            self._ended(job_id, "done", f"test AUC {summary.get('test', {}).get('auc')}")
        except JobAborted:
            self._ended(job_id, "aborted", "aborted by an administrator")
        except MedfedError as exc:
            fed.transport.finish("job failed")
            self._ended(job_id, "failed", str(exc))
        finally:
            self.sessions.stop()
            self.running = None
            close_federation(fed)

    def _ended(self, job_id: int, status: str, detail: str) -> None:
        self.jobs.set_status(job_id, status, detail)
        self.audit.record("job_ended", job=job_id, status=status, detail=detail[:300])
        _say(f"job {job_id} {status}: {detail}")


def coordinate(args: CoordinatorArgs) -> int:
    if args.insecure:
        allow_insecure(args.address, "server")
    limit_arenas()  # before gRPC starts its threads (deploy/memory.py)
    coordinator = Coordinator(args)
    watch = HandshakeWatch(coordinator.audit.record)
    watch.start()
    stop = lambda *_: coordinator.stopping.set()
    signal.signal(signal.SIGTERM, stop)
    try:
        return coordinator.serve()
    except KeyboardInterrupt:
        return 0
    finally:
        watch.stop()


def _say(text: str) -> None:
    sys.stderr.write(f"medfed server: {text}\n")
    sys.stderr.flush()

