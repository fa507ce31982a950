"""Everything a site sends, captured on the wire: a secure-aggregation federation on 127.0.0.1 with
mutual TLS, the server in its own process and the three sites' clients in this one, each channel
wrapped by an interceptor that keeps every message the site sends.

Adversary: the coordinator (and the network it controls). With the sites' default policy, no byte a
site sends reveals its number of training samples n_k, its label counts or its training loss: its
hello carries its name and task schema, its update is a masked vector (n_k inside it) with a
constant sample count and no metrics, and its validation and final evaluations are withheld.
Deliberate breaks that make this test fail: the hello sending the site's sizes under secure
aggregation (a share_* default that ignores the plan); SecureSite returning the true n_samples or
the training loss.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from medfed.deploy import client as client_module
from medfed.deploy.client import ClientArgs, run_client
from medfed.deploy.site_config import load_site_config
from medfed.deploy.site_data import load_site_data
from medfed.transport.proto import medfed_pb2 as pb
from tests.deploy.processes import (
    SITES,
    Processes,
    free_port,
    make_certs,
    write_federation,
    write_site_config,
)

SECURE = "\n[privacy]\nsecure_aggregation = true\n"


class Capture(grpc.StreamStreamClientInterceptor):
    """Keeps every SiteMessage a site's client sends."""

    def __init__(self) -> None:
        self.sent: list[pb.SiteMessage] = []

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        def recorded() -> Iterator[pb.SiteMessage]:
            for message in request_iterator:
                self.sent.append(message)
                yield message
        return continuation(client_call_details, recorded())


def numbers(value: Any) -> list[float]:
    """Every number in a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


def test_with_secure_aggregation_no_byte_a_site_sends_reveals_its_size_labels_or_loss(
        tmp_path: Path, procs: Processes, monkeypatch):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    config = write_federation(tmp_path / "federation.toml", port, rounds=1, extra=SECURE)
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(tmp_path / "state"))
    captures = {site: Capture() for site in SITES}
    real_channel = client_module._channel

    def spied(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
        site = threading.current_thread().name
        return grpc.intercept_channel(real_channel(address, credentials), captures[site])

    monkeypatch.setattr(client_module, "_channel", spied)
    configs = {s: load_site_config(write_site_config(tmp_path / "sites" / f"{s}.toml", s), None, {})
               for s in SITES}
    results: dict[str, int] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, run_client(ClientArgs(
        f"127.0.0.1:{port}", configs[s], certs, max_backoff=1.0, retry_for=60, once=True))), name=s)
        for s in SITES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert procs.wait("server", 30) == 0, procs.log_text()
    assert results == {s: 0 for s in SITES}

    for site, capture in captures.items():
        local = load_site_data(configs[site])
        n_k = local.sizes["n_train"]
        texts = [m.hello.info_json for m in capture.sent if m.WhichOneof("body") == "hello"]
        texts += [m.result.meta_json for m in capture.sent if m.WhichOneof("body") == "result"]
        assert len(texts) >= 5  # two hellos, the secure steps, the update, the evaluations
        for text in texts:
            body = json.loads(text)
            assert not {"n_train", "n_val", "n_test", "label_counts", "train_loss"} & set(_keys(body))
            assert n_k not in numbers(body), (site, text[:300])
        updates = [json.loads(m.result.meta_json) for m in capture.sent
                   if m.WhichOneof("body") == "result" and m.result.size > 0]
        assert updates and all(u["n_samples"] == 1 and not u["metrics"] for u in updates)
        assert any("withheld" in json.loads(t) for t in texts)  # its evaluations stayed home


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in _keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []
