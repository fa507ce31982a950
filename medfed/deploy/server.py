"""`medfed server`: the coordinating process of a deployed federation.

It holds no patient data and opens no data file: the federation file declares a task (schema),
from which it builds the model. It listens (gRPC, mutual TLS), lets in the federation's sites whose
data fits the task (a site reports its schema in its hello; a mismatch is refused and audited),
waits for enough of them, then runs
THE round loop (medfed.server.round_loop) with the gRPC transport. After every completed round it
checkpoints the global model and records the round in SQLite (deploy/state.py) and in the audit
trail (deploy/audit.py). A round that does not reach min_sites is not recorded: it is run again from
the last checkpoint. `--resume` continues a stopped or crashed server from its last completed round.
When the configured rounds are done every site scores the final model on its own splits and sends
aggregates (deploy/evaluation.py); the server writes summary.json (summary.py: the keys of `medfed
run`) into its state folder, says goodbye to the sites and exits 0. With histogram harmonization
the sites' intensity quantiles (from their hellos) are combined into one reference, kept in the
state and sent with every model. With `[privacy] secure_aggregation`, the
strategy is the simulation's SecureAggregation, whose key and unmask messages travel over the
sites' sessions (deploy/secure_exchange.py); a round with fewer than t survivors fails like one
without min_sites: it is not recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography import x509

import medfed
from medfed.algorithms.checkpoint import Checkpoint
from medfed.algorithms.compression import compress_strategy
from medfed.algorithms.compression_spec import parse_compression
from medfed.algorithms.registry import StrategyContext, build_strategy
from medfed.algorithms.split import SplitFed
from medfed.algorithms.strategy import Strategy
from medfed.config import RunConfig
from medfed.config_file import to_toml
from medfed.deploy import relay
from medfed.deploy.audit import AuditLog
from medfed.deploy.audit_verify import open_trail
from medfed.deploy.audit_witness import AUDIT_HEAD
from medfed.deploy.certs import SERVER_NAME, load_context, load_identity
from medfed.deploy.handshakes import HandshakeWatch
from medfed.deploy.harmonization import share_reference
from medfed.deploy.homomorphic_exchange import GrpcDecryptor
from medfed.deploy.memory import limit_arenas, release_freed
from medfed.deploy.results import finish
from medfed.deploy.secure_exchange import GrpcCoordinator
from medfed.deploy.server_model import ServerModel
from medfed.deploy.settings import DeploymentConfig, FederationFile, load_federation
from medfed.deploy.signatures import load_private_key
from medfed.deploy.split_service import SplitService, check_split_messages, middle_end
from medfed.deploy.state import StateStore
from medfed.errors import ConfigError, JobAborted, NotEnoughSites
from medfed.experiment import train_options
from medfed.privacy import ckks
from medfed.privacy.homomorphic import HomomorphicAggregation, HomomorphicError
from medfed.privacy.mechanisms import Mechanisms
from medfed.privacy.secagg import SecureAggregationError
from medfed.privacy.signing import Trust
from medfed.server.round_loop import RoundPlan, RoundResult, run_rounds
from medfed.server.sampling import sample_sites
from medfed.task_schema import TaskSchema
from medfed.transport.admission import server_for
from medfed.transport.grpc_channel import allow_insecure, server_credentials
from medfed.transport.grpc_server import FederationServicer, SiteRegistry
from medfed.transport.grpc_transport import GrpcTransport
from medfed.transport.proto import medfed_pb2 as pb
from medfed.transport.replies import ReplayLedger, SampleBounds
from medfed.transport.split_channel import MiddleEnd
from medfed.types import SiteId


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
    task: TaskSchema
    deployment: DeploymentConfig
    model: ServerModel
    sites: list[SiteId]
    store: StateStore
    audit: AuditLog
    transport: GrpcTransport
    trust: Trust | None = None  # the federation's CA (None with --insecure): checks key adverts
    he_context: bytes | None = None  # homomorphic encryption: server.ckks, the public context
    privacy: Mechanisms = field(init=False)  # one per run: client DP's accountant spans its rounds
    aborted: threading.Event = field(default_factory=threading.Event)  # a job's abort (jobs)
    middle: MiddleEnd | None = None  # split learning: the strategy's middle, as the sites reach it

    def __post_init__(self) -> None:
        self.privacy = Mechanisms.build(self.config, self.sites, deployed=True)


def serve(args: ServerArgs) -> dict[str, Any]:
    """One federation from its file: listen, run it, write its outputs, exit."""
    federation = load_federation(args.config)
    address = args.address or federation.deployment.address
    if args.insecure:
        allow_insecure(address, "server")
    credentials = None if args.insecure else server_credentials(load_identity(args.certs or Path(),
                                                                              SERVER_NAME))
    fed = open_federation(federation, args)
    limit_arenas()  # before gRPC starts its threads (deploy/memory.py)
    watch = HandshakeWatch(fed.audit.record)
    watch.start()
    server = _listen(fed, address, credentials)
    try:
        return run_federation(fed)
    finally:
        server.stop(grace=2).wait(5)
        watch.stop()
        close_federation(fed)


def close_federation(fed: Federation) -> None:
    """Close the trail, then the state that anchors it: a site's stream that ends only now (its
    reader thread outlives the server's stop) has nothing left to record."""
    fed.audit.close()
    fed.store.close()


def open_federation(federation: FederationFile, args: ServerArgs) -> Federation:
    """A federation's model, state (locked, checked), audit trail and transport; nothing listens."""
    config, deployment = federation.config, federation.deployment
    model = ServerModel.build(config, federation.task)  # a model the task cannot take fails here
    if config.federation.algorithm == "split":  # a batch's activations must fit a message
        check_split_messages(model.network, config, model.input_shape)
    he_context = _public_context(config, args)  # a missing or secret context fails before the state
    relay.check_certificates(config, args.insecure)
    trust = None if args.insecure else Trust(x509.load_pem_x509_certificate(
        load_identity(args.certs or Path(), SERVER_NAME).ca))
    store, audit = _open_state(args, config, federation.task)  # a refused --state fails in a moment
    sites = list(deployment.sites)
    registry = SiteRegistry(sites, audit.record)
    transport = GrpcTransport(registry, deployment.round_deadline, deployment.eval_deadline)
    transport.bounds = SampleBounds(deployment.max_samples_per_site)
    transport.replays = ReplayLedger(store)  # a resumed server still knows earlier rounds' updates
    return Federation(config, federation.task, deployment, model, sites, store, audit, transport,
                      trust=trust, he_context=he_context)


def _public_context(config: RunConfig, args: ServerArgs) -> bytes | None:
    """server.ckks: the CKKS context without its secret key (ckks.load refuses one with it)."""
    if not config.privacy.homomorphic:
        return None
    context = None if args.insecure else load_context(args.certs, SERVER_NAME)
    if context is None:
        raise ConfigError("homomorphic encryption needs server.ckks in --certs: issue it with "
                          "`medfed certs ckks --name server` (and SITE.ckks for every site)")
    ckks.load(context, private=False)  # before anything listens: a context that decrypts stops it
    return context


def run_federation(fed: Federation) -> dict[str, Any]:
    """The rounds, the sites' final evaluation and the outputs; then goodbye to the sites."""
    summary = _run_federation(fed)
    fed.transport.finish("federation complete")  # only now: after a crash the sites keep retrying
    return summary


def servicer_hooks(fed: Federation) -> dict[str, Any]:
    """What the Session service asks of a federation: welcome, on_hello and admit."""
    config_toml = to_toml(fed.config)

    def welcome(site: SiteId) -> pb.Welcome:
        body = {"task": fed.task.to_json(), "index": fed.sites.index(site), "sites": fed.sites}
        return pb.Welcome(config_toml=config_toml, federation=json.dumps(body))

    return {"welcome": welcome, "on_hello": lambda site, info: _on_hello(fed, site, info),
            "admit": lambda site, info: _refusal(fed.task, site, info)}


def _listen(fed: Federation, address: str, credentials: grpc.ServerCredentials | None) -> grpc.Server:
    hooks = servicer_hooks(fed)
    servicer = FederationServicer(fed.transport.registry, hooks["welcome"],
                                  insecure=credentials is None, on_hello=hooks["on_hello"],
                                  admit=hooks["admit"])
    server = server_for(len(fed.sites))  # sized so that pending streams cannot starve the sites
    split = SplitService(lambda: fed, insecure=credentials is None)
    server.add_generic_rpc_handlers((servicer.handler(), split.handler()))
    port = (server.add_insecure_port(address) if credentials is None
            else server.add_secure_port(address, credentials))
    server.start()
    fed.audit.record("server_started", address=address, port=port, sites=fed.sites,
                     tls=credentials is not None, resumed_after=fed.store.completed_rounds(),
                     task=fed.task.to_json(), medfed_version=medfed.__version__)
    _say(f"listening on {address} for {', '.join(fed.sites)}")
    return server


def _on_hello(fed: Federation, site: SiteId, info: dict[str, Any]) -> None:
    if info.get("refused"):
        _say(str(info["refused"])[:300])
    fed.store.record_site(site, info)


def _refusal(task: TaskSchema, site: SiteId, hello: dict[str, Any]) -> str | None:
    """Why a site's data does not fit the federation's task (one line), or None."""
    try:
        schema = TaskSchema.from_json(hello.get("schema"), "the site's task schema")
    except ConfigError as exc:
        return f"site {site} sent no usable task schema ({exc}); is it running this medfed version?"
    differences = task.differences(schema)
    if not differences:
        return None
    line = f"site {site}'s data does not fit the federation's task: {'; '.join(differences)}"
    _say(f"refused {line[5:]}")
    return line


def _run_federation(fed: Federation) -> dict[str, Any]:
    started = time.perf_counter()
    need = fed.deployment.min_sites_to_start or len(fed.sites)
    if relay.relays(fed.config):  # p2p: no aggregator, the server relays sealed models
        return relay.run_relay(fed, lambda: _wait_for_sites(fed, need))
    strategy, attempts = None, 0
    while (done := fed.store.completed_rounds()) < fed.config.federation.rounds or strategy is None:
        _check_abort(fed)
        _wait_for_sites(fed, need)
        share_reference(fed.task, fed.transport, fed.store, fed.audit.record, _say)
        strategy = _strategy(fed)
        try:
            run_rounds(strategy, fed.transport, fed.sites,
                       replace(_plan(fed.config, done), max_weight_share=fed.deployment.max_weight_share),
                       train_options(fed.config), _sampling(fed, done), DeployObserver(fed, strategy))
        except (NotEnoughSites, SecureAggregationError, HomomorphicError) as exc:  # not recorded
            _check_abort(fed)
            attempts += 1
            fed.audit.record("round_failed", round=fed.store.completed_rounds() + 1, reason=str(exc),
                             attempt=attempts)
            if attempts > fed.deployment.round_retries:
                raise
            _say(f"{exc}; running the round again")
            strategy = None
    summary = finish(fed, strategy, time.perf_counter() - started)
    fed.audit.record("federation_finished", rounds=fed.store.completed_rounds())
    return summary


def _check_abort(fed: Federation) -> None:
    if fed.aborted.is_set():
        raise JobAborted("the job was aborted")


def _wait_for_sites(fed: Federation, need: int) -> None:
    _say(f"waiting for {need} of {len(fed.sites)} sites")
    deadline = time.monotonic() + fed.deployment.start_timeout
    while not fed.transport.registry.wait_for(need, min(1.0, max(0.0, deadline - time.monotonic()))):
        _check_abort(fed)  # an aborted job stops waiting at once
        if time.monotonic() >= deadline:
            break
    if not fed.transport.registry.wait_for(need, 0):
        connected = fed.transport.registry.connected()
        raise NotEnoughSites(f"only {len(connected)} sites ({', '.join(connected) or 'none'}) "
                             f"connected within {fed.deployment.start_timeout:g} s; "
                             f"min_sites_to_start is {need}")


ACCOUNTANT = "client_dp_accountant"  # client-level DP's RDP history, in each round's checkpoint


def _restore_accountant(fed: Federation, checkpoint: Checkpoint) -> None:
    """A resumed server continues client-level DP's epsilon from its checkpoint, not from zero
    (its noise needs no state: it is fresh OS entropy every round)."""
    stored = checkpoint.facts.get(ACCOUNTANT)
    if fed.privacy.client_dp is not None and stored is not None:
        fed.privacy.client_dp.accountant.history = [tuple(h) for h in stored]


def _strategy(fed: Federation) -> Strategy:
    """The strategy, from the initial model or from the last completed round's checkpoint."""
    checkpoint = fed.store.last_checkpoint()
    m = fed.model
    initial = m.initial
    # Client-level DP (DP-FedAvg): without secure aggregation the server's aggregator clips and
    # adds the noise; with it, SecureAggregation does (sites clip, the server noises the sum).
    ctx = StrategyContext(initial, m.parameter_keys, m.norm_keys, fed.sites, fed.config.federation,
                          fed.config.training, fed.privacy.aggregator(), fed.config.seed,
                          network=m.network, input_shape=m.input_shape)
    # hybrid too: the server computes regional, then global averages (README "Topologies")
    strategy = build_strategy(fed.config.federation.algorithm, ctx, fed.config.federation.topology)
    if fed.config.privacy.secure_aggregation:
        # The simulation's SecureAggregation; its key and unmask messages travel over the sessions.
        strategy = fed.privacy.wrap_strategy(strategy, GrpcCoordinator(fed.transport, fed.trust))
    if fed.config.privacy.homomorphic:  # the sites decrypt the sum over their sessions
        strategy = fed.privacy.wrap_strategy(strategy, decryptor=GrpcDecryptor(fed.transport),
                                             public_context=fed.he_context)
        if isinstance(strategy, HomomorphicAggregation):  # ciphertexts outweigh the model
            fed.transport.reply_bytes = strategy.reply_bytes
    strategy = compress_strategy(strategy, parse_compression(fed.config.federation.compress))
    if checkpoint is not None:  # every algorithm continues where the last completed round left it
        strategy.restore(checkpoint[1])
        _restore_accountant(fed, checkpoint[1])
    # Split learning: the sites reach this strategy's middle through the Split service.
    fed.middle = middle_end(strategy, fed.config) if isinstance(strategy, SplitFed) else None
    return strategy


def _plan(config: RunConfig, done: int) -> RoundPlan:
    f = config.federation
    return RoundPlan(f.rounds, f.fraction, f.min_sites, f.eval_every, start=done,
                     lr_schedule=config.training.lr_schedule)


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
        # Every model sent this round carries the trail's signed head, which the sites keep as
        # witnesses (deploy/audit_witness.py); it covers the previous round's close.
        self.fed.transport.common_options[AUDIT_HEAD] = self.fed.audit.witness_head()
        _say(f"round {round_index + 1}: {', '.join(sites)}")

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None:
        pass

    def round_finished(self, result: RoundResult) -> None:
        for site, why in result.failed.items():
            self.fed.audit.record("update_rejected", round=result.round + 1, site=site, reason=why)
        for site, why in result.eval_failed.items():  # e.g. a malformed evaluate answer
            self.fed.audit.record("evaluation_failed", round=result.round + 1, site=site, reason=why)
        meta = {"algorithm": self.fed.config.federation.algorithm}
        checkpoint = self.strategy.checkpoint()  # everything the server holds, in one file
        client_dp = self.fed.privacy.client_dp
        if client_dp is not None:  # --resume continues epsilon exactly
            checkpoint.facts[ACCOUNTANT] = [list(h) for h in client_dp.accountant.history]
        digest = self.fed.store.record_round(result, checkpoint, meta)
        self.fed.audit.record("round_closed", round=result.round + 1, aggregated=result.sites,
                              left_out=sorted(result.failed), aggregation=result.aggregation,
                              compression=result.compression, protection=result.protection,
                              aggregate_sha256=digest)
        _say(f"round {result.round + 1} closed with {len(result.sites)} updates "
             f"({len(result.failed)} left out)")
        release_freed()  # the round's models and any refused garbage (deploy/memory.py)


def _open_state(args: ServerArgs, config: RunConfig, task: TaskSchema) -> tuple[StateStore, AuditLog]:
    store = StateStore(args.state, resume=args.resume)  # locked and checked (deploy/state_files.py)
    try:
        done = store.completed_rounds()
        if done and not args.resume:
            raise ConfigError(f"{args.state} holds a federation with {done} completed rounds; add "
                              "--resume to continue it, or give a new --state folder")
        key = None if args.insecure else load_private_key((args.certs or Path()) / "server.key")
        audit = open_trail(args.state / "audit.jsonl", store, key, args.resume)
        _record_config(store, audit, to_toml(config) + json.dumps(task.to_json()))
    except BaseException:
        store.close()
        raise
    return store, audit


def _record_config(store: StateStore, audit: AuditLog, text: str) -> None:
    digest = hashlib.sha256(text.encode()).hexdigest()
    before = store.get("config_sha256")
    if before != digest:
        audit.record("config_set" if before is None else "config_changed", sha256=digest,
                     previous=before)
        store.put("config_sha256", digest)
        store.put("config_toml", text)


def _say(text: str) -> None:
    sys.stderr.write(f"medfed server: {text}\n")
    sys.stderr.flush()
