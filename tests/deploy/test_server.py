"""The server's federation loop in one process, with fake sites over real gRPC: a round that gets
fewer than min_sites usable updates is neither checkpointed nor recorded, and runs again."""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import torch

from medfed.config_file import config_from_dict
from medfed.deploy.audit import AuditLog
from medfed.deploy.audit_verify import verify
from medfed.deploy.server import Federation, ServerModel, _listen, _run_federation
from medfed.deploy.settings import DeploymentConfig
from medfed.deploy.state import StateStore
from medfed.experiment import prepare
from medfed.task_schema import TaskSchema
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.grpc_channel import CLIENT_OPTIONS
from medfed.transport.grpc_server import SiteRegistry
from medfed.transport.grpc_transport import GrpcTransport
from tests.deploy.processes import events
from tests.transport.test_grpc import FakeSite, result

TINY = {"seed": 0, "device": "cpu", "baselines": False,
        "data": {"sites": 3, "synthetic_samples": 60, "synthetic_test": 20, "image_size": 16},
        "federation": {"rounds": 2, "min_sites": 2, "eval_every": 0}}


def poisoned(blob: bytes) -> bytes:
    state = decode_state(blob)
    key = next(k for k, v in state.items() if v.is_floating_point())
    return encode_state({**state, key: torch.full_like(state[key], float("nan"))})


def shifted(blob: bytes, by: float) -> bytes:
    """The model moved by `by` (each site its own: byte-identical updates are refused as replays)."""
    return encode_state({k: v + by if v.is_floating_point() else v
                         for k, v in decode_state(blob).items()})


def test_a_round_below_min_sites_is_not_recorded_and_runs_again(tmp_path: Path):
    setup = prepare(config_from_dict(TINY))
    config = setup.config  # with the settings chosen from the data filled in, as a server has it
    sites = setup.federation.site_ids
    task = TaskSchema.of_source(setup.federation.source, 16)
    store, audit = StateStore(tmp_path), AuditLog(tmp_path / "audit.jsonl")
    registry = SiteRegistry(sites, audit.record)
    fed = Federation(config, task, DeploymentConfig(start_timeout=10, round_retries=1),
                     ServerModel.build(config, task), sites, store, audit,
                     GrpcTransport(registry, round_seconds=10, eval_seconds=10))
    server = _listen(fed, "127.0.0.1:0", None)
    port = events(audit.path, "server_started")[0]["port"]
    site_b_answers = itertools.count()
    behaviour = {  # site-a is good; site-b sends NaN once, then good updates; site-c always NaN
        "site-a": lambda task, blob: result(task, shifted(blob, 1e-3)),
        "site-b": lambda task, blob: result(task, poisoned(blob) if next(site_b_answers) == 0
                                            else shifted(blob, 2e-3)),
        "site-c": lambda task, blob: result(task, poisoned(blob)),
    }
    fakes = [FakeSite(grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS), site,
                      behaviour[site], schema=task.to_json()) for site in sites]
    try:
        summary = _run_federation(fed)
    finally:
        for fake in fakes:
            fake.stop()
        server.stop(0).wait(5)
    assert [e["round"] for e in events(audit.path, "round_failed")] == [1]
    assert [e["round"] for e in events(audit.path, "round_closed")] == [1, 2]
    assert [e["aggregated"] for e in events(audit.path, "round_closed")] == [["site-a", "site-b"]] * 2
    assert store.completed_rounds() == 2 and summary["rounds"] == 2
    # The fake sites answer the final evaluation with a model, not aggregates: each is recorded.
    assert set(summary["evaluation"]["failed"]) == set(sites) and summary["test"] == {}
    assert [h["round"] for h in store.history()] == [1, 2]
    assert verify(audit.path).ok
    store.close()
