"""`medfed client`: one hospital's process. It dials out to the server (no inbound port at the
site), proves who it is with its certificate, and then does what the server asks: train the model
it is sent on the site's own data and send back the new weights, or score a model on its own
validation split and send back metrics. Images never leave the process.

The site's data comes from the federation's run configuration, which the server sends when the
site connects: with the built-in synthetic data, each client builds the same synthetic federation
from the same config and seed as the simulation and keeps only its own site's share, so simulation
and deployment train the same model. A lost connection is retried with exponential backoff; the
trainer (and SCAFFOLD's control variate, kept at the site) survives reconnections.
"""

from __future__ import annotations

import json
import queue
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import grpc

from medfed.client.trainer import LocalSite, TrainOptions
from medfed.config_file import config_from_dict
from medfed.data.dataset import label_counts
from medfed.deploy import secure_exchange
from medfed.deploy.certs import load_identity
from medfed.errors import ConfigError
from medfed.experiment import prepare, site_trainer
from medfed.privacy.mechanisms import Mechanisms
from medfed.privacy.secure_round import SecureSite
from medfed.transport import chunks
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.grpc_channel import CLIENT_OPTIONS, allow_insecure, channel_credentials
from medfed.transport.grpc_server import METHOD, REPLACED
from medfed.transport.proto import medfed_pb2 as pb

MAX_BACKOFF = 30.0
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
OPTION_NAMES = {f.name for f in fields(TrainOptions)}


@dataclass(frozen=True)
class ClientArgs:
    server: str
    site: str
    certs: Path | None
    insecure: bool = False
    retry_for: float = 3600.0  # give up after this long without reaching the server
    max_backoff: float = MAX_BACKOFF  # the longest wait between two attempts to reconnect
    data: Path | None = None  # the site's own data file (default: its share of the configured data)


class SiteWorker:
    """The site's trainer, built once from the federation's configuration: on the site's share of
    the configured data, or, with data_file, on that file alone (the site's own MedMNIST-format
    .npz: its train and val images are the site's training and validation splits)."""

    def __init__(self, config_toml: str, site: str, data_file: Path | None = None) -> None:
        config = config_from_dict(tomllib.loads(config_toml), source="the server's configuration")
        if data_file is not None:
            config = replace(config, data=replace(config.data, dataset="medmnist", sites=1,
                                                  data_file=str(data_file), partition="iid",
                                                  sizes=(), proportions=()))
        setup = prepare(config)
        names = setup.federation.site_ids
        if data_file is None and site not in names:
            raise ConfigError(f"site '{site}' is not in this federation's data; valid: {', '.join(names)}")
        k = 0 if data_file is not None else names.index(site)
        data = replace(setup.federation.sites[names[k]], site=site)
        self.config = config
        # The simulation's privacy wrappers: DP-SGD (Opacus) around the trainer, then the
        # SecureSite that masks what it sends; epsilon travels in each update's metrics.
        privacy = Mechanisms.build(config, names)
        self.trainer: LocalSite = privacy.wrap_sites({site: site_trainer(setup, k, data)},
                                                     first_index=k)[site]
        source = setup.federation.source
        self.info = {"site": site, "n_train": len(data.train), "n_val": len(data.val),
                     "label_counts": label_counts(source.task, data.train.y, source.num_outputs)}

    def run(self, task: pb.Task, blob: bytes) -> tuple[dict[str, Any], bytes]:
        """(metadata, update bytes) for one task."""
        if task.kind in secure_exchange.KINDS:
            if not isinstance(self.trainer, SecureSite):
                raise ValueError("this federation does not use secure aggregation")
            return secure_exchange.answer(self.trainer, self.config, task.kind, json.loads(blob)), b""
        state = decode_state(blob)
        options = json.loads(task.options_json or "{}")
        if task.kind == "evaluate":
            return {"metrics": self.trainer.evaluate(state, str(options.get("split", "val")))}, b""
        if task.kind != "train":
            raise ValueError(f"unknown task '{task.kind}'")
        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        update = self.trainer.train(state, TrainOptions(**options))
        meta = {"n_samples": update.n_samples, "n_steps": update.n_steps, "metrics": update.metrics}
        return meta, encode_state(update.state)


def run_client(args: ClientArgs) -> int:
    """Serve the federation until it ends (0) or the server stays unreachable (1)."""
    if args.insecure:
        allow_insecure(args.server, "client")
    credentials = None if args.insecure else channel_credentials(load_identity(args.certs or Path(),
                                                                               args.site))
    worker: SiteWorker | None = None
    backoff, last_contact = min(1.0, args.max_backoff), time.monotonic()
    while True:
        try:
            with _channel(args.server, credentials) as channel:
                worker, finished = _session(channel, args, worker)
            if finished:
                _say(args.site, "the federation is over")
                return 0
            backoff, last_contact = min(1.0, args.max_backoff), time.monotonic()
        except grpc.RpcError as exc:
            if exc.code() in REFUSED:
                raise ConfigError(f"the server refused site {args.site}: {exc.details()}") from None
            _say(args.site, f"no connection to {args.server} ({exc.code().name}); retrying")
        remaining = args.retry_for - (time.monotonic() - last_contact)
        if remaining <= 0:
            _say(args.site, f"gave up after {args.retry_for:g} s without the server")
            return 1
        time.sleep(min(backoff, remaining))
        backoff = min(backoff * 2, args.max_backoff)


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address, options=CLIENT_OPTIONS)
    return grpc.secure_channel(address, credentials, options=CLIENT_OPTIONS)


def _session(channel: grpc.Channel, args: ClientArgs, worker: SiteWorker | None
             ) -> tuple[SiteWorker | None, bool]:
    """One connection: returns (the worker, whether the server said goodbye)."""
    site = args.site
    outbox: queue.Queue = queue.Queue()
    outbox.put(pb.SiteMessage(hello=pb.Hello(info_json=json.dumps({"site": site}))))
    call = channel.stream_stream(METHOD, request_serializer=pb.SiteMessage.SerializeToString,
                                 response_deserializer=pb.ServerMessage.FromString)
    responses = call(_drain(outbox))
    task, assembly, connected = None, None, False
    try:
        for message in responses:
            kind = message.WhichOneof("body")
            if kind == "welcome":
                worker = worker or SiteWorker(message.welcome.config_toml, site, args.data)
                outbox.put(pb.SiteMessage(hello=pb.Hello(info_json=json.dumps(worker.info))))
                connected = True
                _say(site, "connected")
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
                _answer(outbox, worker, task, assembly.result())
                task, assembly = None, None
    except grpc.RpcError as exc:
        if not connected or exc.code() in REFUSED:
            raise
        _say(site, f"connection lost ({exc.code().name})")
    finally:
        outbox.put(None)
        responses.cancel()
    return worker, False


def _answer(outbox: queue.Queue, worker: SiteWorker, task: pb.Task, blob: bytes) -> None:
    try:
        meta, update = worker.run(task, blob)
    except Exception as exc:  # noqa: BLE001 - the site reports its failure; the server goes on
        outbox.put(pb.SiteMessage(result=pb.Result(task_id=task.task_id,
                                                   error=f"{type(exc).__name__}: {exc}")))
        return
    outbox.put(pb.SiteMessage(result=pb.Result(task_id=task.task_id, meta_json=json.dumps(meta),
                                               size=len(update))))
    for piece in chunks.split(update):
        outbox.put(pb.SiteMessage(chunk=pb.Chunk(task_id=task.task_id, data=bytes(piece))))


def _drain(outbox: queue.Queue) -> Iterator[pb.SiteMessage]:
    while (message := outbox.get()) is not None:
        yield message


def _say(site: str, text: str) -> None:
    sys.stderr.write(f"medfed client {site}: {text}\n")
    sys.stderr.flush()
