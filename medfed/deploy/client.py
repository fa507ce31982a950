"""`medfed client`: one hospital's process. It loads the site's own data from the site's own
configuration (deploy/site_config.py; the coordinator never sees it), dials out to the server (no
inbound port at the site), proves who it is with its certificate and reports its data's task schema,
then does what the server asks (deploy/site_worker.py): train the model on the site's data, score a
model on its own validation split, and at the end score the final model on its own test split.
Images, labels and per-image scores never leave the process; what does is listed in the README.

A site whose data does not fit the federation's task is refused at connect time (both sides say
what differs) and exits 2. A lost connection is retried with exponential backoff; the worker (and
SCAFFOLD's control variate, kept at the site) survives reconnections.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from medfed.deploy.certs import load_context, load_identity
from medfed.deploy.site_config import SiteConfig
from medfed.deploy.site_data import LocalData, load_site_data
from medfed.deploy.site_log import SiteLog
from medfed.deploy.site_worker import (
    PlanRefused,
    SiteWorker,
    Welcome,
    site_results,
    welcome_key,
    write_site_results,
)
from medfed.errors import ConfigError
from medfed.privacy.signing import SigningIdentity
from medfed.transport import chunks
from medfed.transport.grpc_channel import CLIENT_OPTIONS, allow_insecure, channel_credentials
from medfed.transport.grpc_server import METHOD, REPLACED
from medfed.transport.proto import medfed_pb2 as pb

MAX_BACKOFF = 30.0
STOP_GRACE = 10.0  # seconds a stopping agent waits for its threads before it exits anyway
TLS_ATTEMPTS = 3  # handshake refusals in a row before the site stops with the plain reason
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
           grpc.StatusCode.FAILED_PRECONDITION)


@dataclass(frozen=True)
class ClientArgs:
    server: str
    site: SiteConfig
    certs: Path | None
    insecure: bool = False
    retry_for: float = 3600.0  # during a federation: give up after this long without the server
    max_backoff: float = MAX_BACKOFF  # the longest wait between two attempts to reconnect
    once: bool = False  # exit after one federation instead of waiting for the next


def run_client(args: ClientArgs) -> int:
    """A site agent: serve federation after federation until stopped (Ctrl-C or SIGTERM: 0), or
    with `once` until the first federation ends (0); 1 when the server stays unreachable during a
    federation; a refused certificate or plan is a ConfigError (one line, exit 2)."""
    site = args.site.site
    if args.insecure:
        allow_insecure(args.server, "client")
    identity = None if args.insecure else load_identity(args.certs or Path(), site)
    credentials = None if identity is None else channel_credentials(identity)
    signer = None if identity is None else SigningIdentity.from_pem(
        site, identity.certificate, identity.key, identity.ca)  # signs secure aggregation's messages
    log = SiteLog(site, args.site.state / "site.log")
    local = load_site_data(args.site)  # first: a wrong path is the site's error, before any network
    log.say(f"data: {args.site.data.dataset}, {local.sizes['n_train']} training / "
            f"{local.sizes['n_val']} validation / {local.sizes['n_test']} test samples; "
            f"state in {args.site.state}")
    _stop_on_signals()
    try:
        return _serve(args, local, credentials, signer, log)
    except KeyboardInterrupt:
        log.say("stopped")
        return 0


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the agent; if a connection's threads keep it from exiting, it
    exits anyway STOP_GRACE seconds later (an agent that will not stop is worse than a cut stream)."""
    if threading.current_thread() is not threading.main_thread():
        return  # an agent run inside another program (a test) leaves signals to it

    def stop(signum: int, frame: object) -> None:
        watchdog = threading.Timer(STOP_GRACE, lambda: os._exit(0))
        watchdog.daemon = True
        watchdog.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _serve(args: ClientArgs, local: LocalData, credentials: grpc.ChannelCredentials | None,
           signer: SigningIdentity | None, log: SiteLog) -> int:
    worker: SiteWorker | None = None
    backoff, last_contact, idle, refusals = min(1.0, args.max_backoff), time.monotonic(), False, 0
    while True:
        try:
            with _channel(args.server, credentials) as channel:
                worker, finished = _session(channel, args, local, worker, signer, log)
            refusals = 0
            if finished and args.once:
                log.say("the federation is over")
                return 0
            if finished:
                log.say("the federation is over; waiting for the next one (Ctrl-C stops this site)")
                idle = True
            elif worker is not None:
                idle = False
            backoff, last_contact = min(1.0, args.max_backoff), time.monotonic()
        except grpc.RpcError as exc:
            if exc.code() in REFUSED:
                raise ConfigError(f"the server refused site {args.site.site}: {exc.details()}") from None
            plain = tls_refusal(exc.details() or "")
            refusals = refusals + 1 if plain else 0
            if plain and refusals >= TLS_ATTEMPTS:
                raise ConfigError(plain) from None
            if not idle:
                log.say(plain or f"no connection to {args.server} ({exc.code().name}); retrying")
        remaining = args.retry_for - (time.monotonic() - last_contact)
        if remaining <= 0 and not idle:
            log.say(f"gave up after {args.retry_for:g} s without the server")
            return 1
        time.sleep(min(backoff, remaining) if not idle else backoff)
        backoff = min(backoff * 2, args.max_backoff)


def tls_refusal(details: str) -> str | None:
    """A plain sentence for a TLS refusal, from gRPC's connection error text (None: not one)."""
    if "handshake failed" in details.lower():
        return ("this site does not trust the server's certificate (TLS handshake failed): is "
                "ca.crt in --certs the federation's authority, and was the server's certificate "
                "issued for the host in --server?")
    if "Socket closed" in details:
        return ("the server closed the connection during the TLS handshake: it refused this site's "
                "certificate (issued by another authority, expired, or not a site certificate?)")
    return None


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address, options=CLIENT_OPTIONS)
    return grpc.secure_channel(address, credentials, options=CLIENT_OPTIONS)


def _session(channel: grpc.Channel, args: ClientArgs, local: LocalData,
             worker: SiteWorker | None, signer: SigningIdentity | None, log: SiteLog
             ) -> tuple[SiteWorker | None, bool]:
    """One connection: returns (the worker, whether the server said goodbye)."""
    site = args.site.site
    outbox: queue.Queue = queue.Queue()
    hello = {"site": site, "schema": local.schema.to_json()}
    outbox.put(pb.SiteMessage(hello=pb.Hello(info_json=json.dumps(hello))))
    call = channel.stream_stream(METHOD, request_serializer=pb.SiteMessage.SerializeToString,
                                 response_deserializer=pb.ServerMessage.FromString)
    responses = call(_drain(outbox))
    task, assembly, connected = None, None, False
    try:
        for message in responses:
            kind = message.WhichOneof("body")
            if kind == "welcome":
                joined = welcome_key(message.welcome.config_toml, message.welcome.federation)
                if worker is None or worker.welcome_key != joined:
                    worker = _worker(args, local, message.welcome, outbox, signer)
                    log.say(f"joined a federation: {worker.config.federation.algorithm}, "
                            f"{worker.config.federation.rounds} rounds, task "
                            f"{worker.welcome.task.kind} ({', '.join(worker.welcome.task.classes)})")
                outbox.put(pb.SiteMessage(hello=pb.Hello(info_json=json.dumps(worker.info))))
                if worker.wire is not None:  # split learning calls the server on this channel
                    worker.wire.connect(channel)
                connected = True
                log.say("connected")
            elif kind == "task":
                task, assembly = message.task, chunks.Assembly(message.task.size, message.task.size)
            elif kind == "chunk" and assembly is not None and task is not None:
                assembly.add(message.chunk.data)
            elif kind == "goodbye":
                if message.goodbye.reason == REPLACED:
                    raise ConfigError(f"another client of site {site} connected to the server; "
                                      "this one stops (run one client per site)")
                return worker, True
            if task is not None and assembly is not None and assembly.complete and worker:
                _answer(outbox, worker, task, assembly.result(), args.site.state, log)
                task, assembly = None, None
    except grpc.RpcError as exc:
        if not connected or exc.code() in REFUSED:
            raise
        log.say(f"connection lost ({exc.code().name})")
    finally:
        outbox.put(None)
        responses.cancel()
    return worker, False


def _worker(args: ClientArgs, local: LocalData, welcome: pb.Welcome, outbox: queue.Queue,
            signer: SigningIdentity | None) -> SiteWorker:
    """The worker for this federation; a plan the site's policy refuses is told to the server
    (which audits it) and ends the client with that one line."""
    site = args.site
    try:
        return SiteWorker(local, Welcome.parse(welcome.config_toml, welcome.federation), site.site,
                          site.policy, site.state, signer,
                          None if args.insecure else load_context(args.certs, site.site))
    except PlanRefused as exc:
        refusal = {"site": site.site, "refused": str(exc)}
        outbox.put(pb.SiteMessage(hello=pb.Hello(info_json=json.dumps(refusal))))
        outbox.put(None)
        time.sleep(1.0)  # the refusal reaches the server before the stream is cancelled
        raise


def _answer(outbox: queue.Queue, worker: SiteWorker, task: pb.Task, blob: bytes, state: Path,
            log: SiteLog) -> None:
    try:
        options = json.loads(task.options_json or "{}")
        if not isinstance(options, dict):
            raise TypeError("task options are not a JSON object")
        meta, update = worker.run(task.kind, options, blob, task.task_id)
        if task.kind == "final" and worker.last_final is not None:
            written = write_site_results(state, site_results(worker, worker.last_final))
            log.say(f"final model scored on this site's test split; report: {written[-1]}")
    except Exception as exc:  # noqa: BLE001 - the site reports its failure; the server goes on
        log.say(f"task {task.kind} failed: {type(exc).__name__}: {exc}")
        outbox.put(pb.SiteMessage(result=pb.Result(task_id=task.task_id,
                                                   error=f"{type(exc).__name__}: {exc}")))
        return
    if task.kind == "train":
        split = (f" and {worker.wire.sent} bytes of activations and gradients"
                 if worker.wire is not None else "")
        log.say(f"round {task.round}: trained, sent {len(update)} bytes{split} (loss {_loss(meta)})")
    elif task.kind == "evaluate":
        log.say(f"round {task.round}: validation {_auc(meta)}")
    outbox.put(pb.SiteMessage(result=pb.Result(task_id=task.task_id, meta_json=json.dumps(meta),
                                               size=len(update))))
    for piece in chunks.split(update):
        outbox.put(pb.SiteMessage(chunk=pb.Chunk(task_id=task.task_id, data=bytes(piece))))


def _auc(meta: dict[str, Any]) -> str:
    value = (meta.get("metrics") or {}).get("auc")
    return f"AUC {value:.3f}" if isinstance(value, float) else "withheld or n/a"


def _loss(meta: dict[str, Any]) -> str:
    value = (meta.get("metrics") or {}).get("train_loss")
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def _drain(outbox: queue.Queue) -> Iterator[pb.SiteMessage]:
    while (message := outbox.get()) is not None:
        yield message


