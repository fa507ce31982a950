"""A federation server in this process (the CLI server's own functions, over real gRPC with mutual
TLS on 127.0.0.1) and fake sites that dial it with their own certificates: honest ones, and one
attacker whose answers the test chooses. The server "exits" when _run_federation raises."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch

from medfed.config_file import config_from_dict
from medfed.defaults import DataFacts, choose_defaults
from medfed.deploy import certs
from medfed.deploy.audit import AuditLog
from medfed.deploy.server import Federation, ServerModel, _listen, _run_federation
from medfed.deploy.settings import DeploymentConfig
from medfed.deploy.state import StateStore
from medfed.task_schema import TaskSchema
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.grpc_channel import CLIENT_OPTIONS, channel_credentials, server_credentials
from medfed.transport.grpc_transport import GrpcTransport
from medfed.transport.proto import medfed_pb2 as pb
from medfed.transport.replies import ReplayLedger, SampleBounds
from tests.deploy.processes import events
from tests.transport.test_grpc import FakeSite, result

SITES = ["site-a", "site-b", "site-c"]
TASK = {"kind": "binary", "classes": ["normal", "finding"], "spatial_dims": 2, "channels": 1,
        "image_size": 16}
CONFIG = {"seed": 0, "device": "cpu", "baselines": False,
          "data": {"sites": 3, "synthetic_samples": 60, "synthetic_test": 20, "image_size": 16},
          "federation": {"rounds": 2, "min_sites": 2, "eval_every": 1}}
Answer = Callable[[pb.Task, bytes], list[pb.SiteMessage]]


def shifted(blob: bytes, by: float) -> bytes:
    return encode_state({k: v + by if v.is_floating_point() else v
                         for k, v in decode_state(blob).items()})


def honest(by: float) -> Answer:
    """Trains (moves every float by `by`, its own), scores with plausible metrics."""
    def answer(task: pb.Task, blob: bytes) -> list[pb.SiteMessage]:
        if task.kind == "evaluate":
            return result(task, b"", meta={"metrics": {"auc": 0.5, "n": 10}})
        return result(task, shifted(blob, by))
    return answer


def pki(folder: Path) -> Path:
    certs.init_ca(folder)
    certs.issue(folder, "server")
    for name in [*SITES, "intruder"]:
        certs.issue(folder, name)
    return folder


def dial(folder: Path, port: int, name: str) -> grpc.Channel:
    creds = channel_credentials(certs.load_identity(folder, name))
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=CLIENT_OPTIONS)


@dataclass
class Run:
    summary: dict[str, Any] | None
    error: BaseException | None
    audit: Path
    store: StateStore

    def events(self, kind: str) -> list[dict]:
        return events(self.audit, kind)

    def rejected(self, site: str) -> list[str]:
        return [e["reason"] for e in self.events("update_rejected") if e["site"] == site]


class DeclaringSite(FakeSite):
    """A fake site whose second hello declares sizes, as a real client's does."""

    ready: dict

    def _requests(self):
        first = {"site": self.site, "schema": self.schema}
        yield pb.SiteMessage(hello=pb.Hello(info_json=json.dumps(first)))
        yield pb.SiteMessage(hello=pb.Hello(info_json=json.dumps({**first, **self.ready})))
        while (message := self.outbox.get()) is not None:
            yield message


class Server:
    """The federation's server in a thread; start() returns its port."""

    def __init__(self, tmp: Path, deployment: DeploymentConfig, config: dict | None = None) -> None:
        self.certs = pki(tmp / "certs")
        task = TaskSchema.from_json(TASK)
        # filled in from the task as `medfed server` fills a federation file (settings.py)
        run_config = choose_defaults(config_from_dict(config or CONFIG), DataFacts.of_task(task)).config
        self.task = task
        store, audit = StateStore(tmp / "state"), AuditLog(tmp / "state" / "audit.jsonl")
        from medfed.transport.grpc_server import SiteRegistry
        transport = GrpcTransport(SiteRegistry(SITES, audit.record), deployment.round_deadline,
                                  deployment.eval_deadline)
        transport.bounds = SampleBounds(deployment.max_samples_per_site)
        transport.replays = ReplayLedger(store)
        self.fed = Federation(run_config, task, deployment, ServerModel.build(run_config, task),
                              SITES, store, audit, transport)
        creds = server_credentials(certs.load_identity(self.certs, "server"))
        self.grpc = _listen(self.fed, "127.0.0.1:0", creds)
        self.port = events(audit.path, "server_started")[0]["port"]
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.outcome["summary"] = _run_federation(self.fed)
        except BaseException as exc:  # noqa: BLE001 - the test reports it as the server's exit
            self.outcome["error"] = exc

    def site(self, name: str, answer: Answer, claimed: str | None = None,
             ready: dict | None = None) -> FakeSite:
        """A fake site; `ready`: what its second hello declares (e.g. its training size)."""
        kind = DeclaringSite if ready else FakeSite
        fake = kind.__new__(kind)
        fake.ready = ready or {}
        fake.__init__(dial(self.certs, self.port, name), claimed or name, answer,
                      schema=self.task.to_json())
        return fake

    def run(self, timeout: float = 60) -> Run:
        self.thread.start()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the federation did not finish within {timeout} s"
        self.grpc.stop(0).wait(5)
        return Run(self.outcome.get("summary"), self.outcome.get("error"), self.fed.audit.path,
                   self.fed.store)


def deployment(**overrides: Any) -> DeploymentConfig:
    base = {"sites": tuple(SITES), "min_sites_to_start": 3, "round_deadline": 10.0,
            "eval_deadline": 5.0, "start_timeout": 20.0, "round_retries": 0}
    return DeploymentConfig(**{**base, **overrides})


def meta(n_samples: Any = 10) -> dict:
    return {"n_samples": n_samples, "n_steps": 1, "metrics": {"train_loss": 0.5}}


def raw_result(task: pb.Task, meta_json: str, size: int, data: bytes = b"") -> list[pb.SiteMessage]:
    head = pb.SiteMessage(result=pb.Result(task_id=task.task_id, meta_json=meta_json, size=size))
    body = [pb.SiteMessage(chunk=pb.Chunk(task_id=task.task_id, data=data))] if data else []
    return [head, *body]


def first_float(state_blob: bytes) -> torch.Tensor:
    state = decode_state(state_blob)
    return next(v for v in state.values() if v.is_floating_point())


__all__ = ["Run", "Server", "deployment", "honest", "meta", "raw_result", "json"]
