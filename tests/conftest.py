"""Shared fixtures: tiny MedMNIST-format files made in tmp_path, a tiny synthetic config, a gRPC
server on 127.0.0.1, and the optional shared data folder.

Every test runs offline and fast. Torch gets one intra-op thread: on two CPU cores shared with other
work, two OpenMP threads per process oversubscribe the CPU and small models train several times
slower (measured ~7x on this machine under load); results do not depend on the thread count here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from medfed.transport.grpc_channel import SERVER_OPTIONS
from medfed.transport.grpc_server import FederationServicer, SiteRegistry
from medfed.transport.proto import medfed_pb2 as pb
from tests.medmnist_files import MEDMNIST_KINDS, write_medmnist

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)

settings.register_profile("medfed", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("medfed")


@pytest.fixture
def medmnist_npz(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """make(kind, name=None, side=None, sizes=(20, 6, 10)) -> (path, the arrays written)."""

    def make(kind: str, name: str | None = None, side: int | None = None,
             sizes: tuple[int, int, int] = (20, 6, 10)) -> tuple[Path, dict[str, np.ndarray]]:
        file_name, shape, columns, classes = MEDMNIST_KINDS[kind]
        if side is not None:  # smaller images for tests that train
            shape = tuple(side if s == 28 else s for s in shape)
        path = tmp_path / (name or file_name)
        return path, write_medmnist(path, shape, columns, classes, sizes)

    return make


TINY_SYNTHETIC_TOML = """\
device = "cpu"
[data]
sites = 3
synthetic_samples = 240
synthetic_test = 120
augment = false
[federation]
rounds = {rounds}
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Callable[[int], list[str]]:
    """tiny_config(rounds) -> ["--config", FILE]: 3 synthetic sites small enough for a CLI test."""

    def write(rounds: int) -> list[str]:
        path = tmp_path_factory.mktemp("config") / "tiny.toml"
        path.write_text(TINY_SYNTHETIC_TOML.format(rounds=rounds))
        return ["--config", str(path)]

    return write


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """<repo>/../shared/data: real data sets, present on the project machine, absent elsewhere."""
    path = REPO / ".." / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path.resolve()} is absent (real data sets are optional)")
    return path


@pytest.fixture(scope="session")
def pneumoniamnist_file(shared_data: Path) -> Path:
    path = shared_data / "medmnist" / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent; PneumoniaMNIST is at https://zenodo.org/records/10519652")
    return path


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[SiteRegistry, int, list]]]:
    """serve(sites, credentials=None) -> (registry, port, audit): a real gRPC server in this
    process on 127.0.0.1 (insecure without credentials); every server is stopped afterwards."""
    servers: list[grpc.Server] = []

    def start(sites: list[str], credentials: grpc.ServerCredentials | None = None):
        audit: list[tuple[str, dict]] = []
        registry = SiteRegistry(sites, lambda event, **fields: audit.append((event, fields)))
        servicer = FederationServicer(registry, lambda site: pb.Welcome(), insecure=credentials is None)
        server = grpc.server(ThreadPoolExecutor(len(sites) + 8), options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((servicer.handler(),))
        port = (server.add_insecure_port("127.0.0.1:0") if credentials is None
                else server.add_secure_port("127.0.0.1:0", credentials))
        server.start()
        servers.append(server)
        return registry, port, audit

    yield start
    for server in servers:
        server.stop(0).wait(5)
