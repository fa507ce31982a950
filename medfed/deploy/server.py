"""`medfed server`: the coordinating process of a deployed federation.

It listens (gRPC, mutual TLS), lets in the federation's sites, waits for enough of them, then runs
THE round loop (medfed.server.round_loop) with the gRPC transport. After every completed round it
checkpoints the global model and records the round in SQLite (deploy/state.py) and in the audit
trail (deploy/audit.py). A round that does not reach min_sites is not recorded: it is run again from
the last checkpoint. `--resume` continues a stopped or crashed server from its last completed round.
When the configured rounds are done it writes summary.json (the keys of `medfed run`) into its
state folder, says goodbye to the sites and exits 0. With `[privacy] secure_aggregation`, the
strategy is the simulation's SecureAggregation, whose key and unmask messages travel over the
sites' sessions (deploy/secure_exchange.py); a round with fewer than t survivors fails like one
without min_sites: it is not recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

import medfed
from medfed.algorithms.registry import StrategyContext, build_strategy
from medfed.algorithms.strategy import Strategy
from medfed.config import RunConfig
from medfed.config_file import to_toml
from medfed.deploy.audit import AuditLog
from medfed.deploy.certs import SERVER_NAME, load_identity
from medfed.deploy.handshakes import HandshakeWatch
from medfed.deploy.secure_exchange import GrpcCoordinator
from medfed.deploy.settings import DeploymentConfig, load_federation
from medfed.deploy.state import StateStore, atomic_write
from medfed.errors import ConfigError, NotEnoughSites
from medfed.experiment import Setup, prepare, score_test, train_options
from medfed.output import write_json
from medfed.privacy.mechanisms import Mechanisms
from medfed.privacy.secagg import SecureAggregationError
from medfed.server.round_loop import RoundPlan, RoundResult, run_rounds
from medfed.server.sampling import sample_sites
from medfed.transport.codec import encode_state
from medfed.transport.grpc_channel import SERVER_OPTIONS, allow_insecure, server_credentials
from medfed.transport.grpc_server import FederationServicer, SiteRegistry
from medfed.transport.grpc_transport import GrpcTransport
from medfed.transport.proto import medfed_pb2 as pb
from medfed.types import SiteId

# Strategies whose whole server state is the global model: a checkpoint is enough to resume them.
RESUMABLE = ("fedavg", "fedprox")


@dataclass(frozen=True)
class ServerArgs:
    config: Path
    certs: Path | None
    state: Path
    address: str | None = None
    resume: bool = False
    insecure: bool = False


@dataclass
class Federation:
    """Everything one server run holds."""

    config: RunConfig
    deployment: DeploymentConfig
    setup: Setup
    sites: list[SiteId]
    store: StateStore
    audit: AuditLog
    transport: GrpcTransport
    privacy: Mechanisms = field(init=False)  # one per run: client DP's accountant spans its rounds

    def __post_init__(self) -> None:
        self.privacy = Mechanisms.build(self.config, self.sites)


def serve(args: ServerArgs) -> dict[str, Any]:
    config, deployment = load_federation(args.config)
    address = args.address or deployment.address
    if args.insecure:
        allow_insecure(address, "server")
    credentials = None if args.insecure else server_credentials(load_identity(args.certs or Path(),
                                                                              SERVER_NAME))
    store, audit = _open_state(args, config)  # first: a refused --state fails in a moment
    try:
        setup = prepare(config)  # the initial model and the held-out test set, as in simulation
        sites = _sites(deployment, setup)
    except BaseException:
        store.close()
        raise
    registry = SiteRegistry(sites, audit.record)
    transport = GrpcTransport(registry, deployment.round_deadline, deployment.eval_deadline)
    fed = Federation(config, deployment, setup, sites, store, audit, transport)
    watch = HandshakeWatch(audit.record)
    watch.start()
    server = _listen(fed, address, credentials)
    try:
        summary = _run_federation(fed)
        transport.finish("federation complete")  # only now: after a crash the sites keep retrying
        return summary
    finally:
        server.stop(grace=2).wait(5)
        watch.stop()
        store.close()


def _listen(fed: Federation, address: str, credentials: grpc.ServerCredentials | None) -> grpc.Server:
    welcome = pb.Welcome(config_toml=to_toml(fed.config))
    servicer = FederationServicer(fed.transport.registry, welcome, insecure=credentials is None,
                                  on_hello=fed.store.record_site)
    server = grpc.server(ThreadPoolExecutor(max_workers=len(fed.sites) + 8), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = (server.add_insecure_port(address) if credentials is None
            else server.add_secure_port(address, credentials))
    server.start()
    fed.audit.record("server_started", address=address, port=port, sites=fed.sites,
                     tls=credentials is not None, resumed_after=fed.store.completed_rounds(),
                     medfed_version=medfed.__version__)
    _say(f"listening on {address} for {', '.join(fed.sites)}")
    return server


def _run_federation(fed: Federation) -> dict[str, Any]:
    started = time.perf_counter()
    need = fed.deployment.min_sites_to_start or len(fed.sites)
    strategy, attempts = None, 0
    while (done := fed.store.completed_rounds()) < fed.config.federation.rounds or strategy is None:
        _wait_for_sites(fed, need)
        strategy = _strategy(fed)
        try:
            run_rounds(strategy, fed.transport, fed.sites, _plan(fed.config, done),
                       train_options(fed.config), _sampling(fed, done), DeployObserver(fed, strategy))
        except (NotEnoughSites, SecureAggregationError) as exc:  # the round is not recorded
            attempts += 1
            fed.audit.record("round_failed", round=fed.store.completed_rounds() + 1, reason=str(exc),
                             attempt=attempts)
            if attempts > fed.deployment.round_retries or fed.config.federation.algorithm \
                    not in RESUMABLE:
                raise
            _say(f"{exc}; running the round again")
            strategy = None
    summary = _finish(fed, strategy, time.perf_counter() - started)
    fed.audit.record("federation_finished", rounds=fed.store.completed_rounds())
    return summary


def _wait_for_sites(fed: Federation, need: int) -> None:
    _say(f"waiting for {need} of {len(fed.sites)} sites")
    if not fed.transport.registry.wait_for(need, fed.deployment.start_timeout):
        connected = fed.transport.registry.connected()
        raise NotEnoughSites(f"only {len(connected)} sites ({', '.join(connected) or 'none'}) "
                             f"connected within {fed.deployment.start_timeout:g} s; "
                             f"min_sites_to_start is {need}")


def _last_epsilon(history: list[dict]) -> dict[str, float]:
    """Each site's epsilon as its last update reported it (DP-SGD's accountant lives at the site)."""
    spent: dict[str, float] = {}
    for record in history:
        spent |= record.get("epsilon") or {}
    return spent


def _strategy(fed: Federation) -> Strategy:
    """The strategy, from the initial model or from the last completed round's checkpoint."""
    checkpoint = fed.store.last_checkpoint()
    initial = checkpoint[1] if checkpoint else fed.setup.initial
    s = fed.setup
    # Client-level DP (DP-FedAvg): without secure aggregation the server's aggregator clips and
    # adds the noise; with it, SecureAggregation does (sites clip, the server noises the sum).
    ctx = StrategyContext(initial, s.parameter_keys, s.norm_keys, fed.sites, fed.config.federation,
                          fed.config.training, aggregator_override=fed.privacy.aggregator())
    strategy = build_strategy(fed.config.federation.algorithm, ctx)
    if not fed.config.privacy.secure_aggregation:
        return strategy
    # The simulation's SecureAggregation; its key and unmask messages travel over the sessions.
    return fed.privacy.wrap_strategy(strategy, GrpcCoordinator(fed.transport))


def _plan(config: RunConfig, done: int) -> RoundPlan:
    f = config.federation
    return RoundPlan(f.rounds, f.fraction, f.min_sites, f.eval_every, start=done)


def _sampling(fed: Federation, done: int) -> np.random.Generator:
    """The simulation's sampling generator, advanced past the rounds already completed."""
    f = fed.config.federation
    rng = np.random.default_rng(np.random.SeedSequence([fed.config.seed, 2]))
    for _ in range(done):
        sample_sites(fed.sites, f.fraction, rng, minimum=f.min_sites)
    return rng


class DeployObserver:
    """Audits each round's start and close, and records a completed round durably."""

    def __init__(self, fed: Federation, strategy: Strategy) -> None:
        self.fed, self.strategy = fed, strategy

    def round_started(self, round_index: int, sites: list[SiteId]) -> None:
        self.fed.transport.begin_round(round_index)
        self.fed.audit.record("round_started", round=round_index + 1, sites=sites,
                              connected=self.fed.transport.registry.connected())
        _say(f"round {round_index + 1}: {', '.join(sites)}")

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None:
        pass

    def round_finished(self, result: RoundResult) -> None:
        for site, why in result.failed.items():
            self.fed.audit.record("update_rejected", round=result.round + 1, site=site, reason=why)
        meta = {"algorithm": self.fed.config.federation.algorithm}
        digest = self.fed.store.record_round(result, self.strategy.global_state, meta)
        self.fed.audit.record("round_closed", round=result.round + 1, aggregated=result.sites,
                              left_out=sorted(result.failed), aggregation=result.aggregation,
                              aggregate_sha256=digest)
        _say(f"round {result.round + 1} closed with {len(result.sites)} updates "
             f"({len(result.failed)} left out)")


def _finish(fed: Federation, strategy: Strategy, seconds: float) -> dict[str, Any]:
    """summary.json, rounds.jsonl and model.safetensors in the state folder."""
    history = fed.store.history()
    config, source = fed.config, fed.setup.federation.source
    info = fed.store.site_info()
    last_val = history[-1]["val"] if history else {}
    summary: dict[str, Any] = {
        "medfed_version": medfed.__version__, "mode": "deployment", "dataset": source.name,
        "task": str(source.task), "class_names": list(source.class_names),
        "partition": fed.setup.federation.partition, "algorithm": config.federation.algorithm,
        "aggregator": config.federation.aggregator, "model": config.model.model,
        "norm": config.model.norm, "rounds": len(history),
        "local_epochs": config.training.local_epochs, "seed": config.seed,
        "sites": {s: {**_sizes(info.get(s, {})), "val": last_val.get(s) or {}} for s in fed.sites},
        "test": score_test(fed.setup, strategy, fed.sites), "n_test": len(source.test),
        "device": str(fed.setup.predictor.device), "wall_seconds": seconds,
        # over every recorded round, also those of a server process before a --resume
        "bytes_up": sum(h["bytes_up"] for h in history),
        "bytes_down": sum(h["bytes_down"] for h in history),
        "failed_updates": {h["round"]: h["failed"] for h in history if h["failed"]},
    }
    if fed.privacy.active:
        summary["privacy"] = fed.privacy.report()
        if config.privacy.dp_sgd:  # the sites' accountants are at the sites: their last reports
            summary["privacy"]["epsilon"] = _last_epsilon(history)
    out = fed.store.folder
    summary["files"] = ["summary.json", "rounds.jsonl", "model.safetensors", "audit.jsonl",
                        "medfed.sqlite"]
    write_json(out / "summary.json", summary)
    lines = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(out / "rounds.jsonl", lines.encode())
    model = encode_state(strategy.global_state, {"algorithm": config.federation.algorithm})
    atomic_write(out / "model.safetensors", model)
    fed.audit.record("model_written", sha256=hashlib.sha256(model).hexdigest())
    return summary


def _sites(deployment: DeploymentConfig, setup: Setup) -> list[SiteId]:
    known = setup.federation.site_ids
    sites = list(deployment.sites) or list(known)
    unknown = [s for s in sites if s not in known]
    if unknown:
        raise ConfigError(f"[deployment] sites {unknown} are not sites of the federation's data; "
                          f"valid: {', '.join(known)}")
    return sites


def _open_state(args: ServerArgs, config: RunConfig) -> tuple[StateStore, AuditLog]:
    args.state.mkdir(parents=True, exist_ok=True)
    store = StateStore(args.state)
    audit = AuditLog(args.state / "audit.jsonl")
    done = store.completed_rounds()
    if done and not args.resume:
        store.close()
        raise ConfigError(f"{args.state} holds a federation with {done} completed rounds; add "
                          "--resume to continue it, or give a new --state folder")
    if done and config.federation.algorithm not in RESUMABLE:
        store.close()
        raise ConfigError(f"--resume supports {', '.join(RESUMABLE)}; "
                          f"{config.federation.algorithm} keeps server state a checkpoint lacks")
    _record_config(store, audit, to_toml(config))
    return store, audit


def _record_config(store: StateStore, audit: AuditLog, text: str) -> None:
    digest = hashlib.sha256(text.encode()).hexdigest()
    before = store.get("config_sha256")
    if before != digest:
        audit.record("config_set" if before is None else "config_changed", sha256=digest,
                     previous=before)
        store.put("config_sha256", digest)
        store.put("config_toml", text)


def _sizes(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("n_train", "n_val", "label_counts") if k in info}


def _say(text: str) -> None:
    sys.stderr.write(f"medfed server: {text}\n")
    sys.stderr.flush()
