"""The Ray backend's driver and worker sides (ray_pool.py, ray_transport.py, ray_worker.py) wired
through a stand-in for Ray that calls each worker in this process, as Ray calls an actor: object
refs given as arguments are resolved, nothing else. Fast, and no Ray needed; the real Ray runs in
test_ray_transport.py.

Hand mutations, each turned a test here red:
- RayTransport counts a model's bytes once per put, not once per site: byte counts differ;
- the worker's error reply ignored (every failure a TransportError): the DataError test fails;
- site k placed on worker 0 always: the placement test fails;
- site k built as site 0 in its worker (recipe.trainer(0, ...)): the models differ.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medfed.algorithms.fedavg import FedAvg
from medfed.config import RunConfig
from medfed.config_execution import ExecutionConfig
from medfed.data.transforms import Preprocess
from medfed.errors import DataError, TransportError
from medfed.models import build_model
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.simulated_site import SiteRecipe
from medfed.transport.inprocess import InProcessTransport
from medfed.transport.ray_pool import RayPool
from medfed.types import Task
from tests.transport.test_inprocess import OPTIONS, SPEC, site_data


class Ref:
    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value, self.error = value, error


class StandInRayError(Exception):
    pass


class StandInRay:
    """ray.put / get / remote / kill / cluster_resources, in this process."""

    exceptions = SimpleNamespace(RayError=StandInRayError, GetTimeoutError=TimeoutError)

    def __init__(self, cpus: float = 2.0) -> None:
        self.cpus, self.puts = cpus, 0

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus}

    def put(self, value: Any) -> Ref:
        self.puts += 1
        return Ref(value)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        if isinstance(ref, list):
            return [self.get(r) for r in ref]
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor: Any) -> None:
        actor.killed = True

    def remote(self, cls: type) -> Any:
        start = lambda *args: Actor(cls(*args))  # ray.remote(cls).options(...).remote(*args)
        return SimpleNamespace(options=lambda **_: SimpleNamespace(remote=start))


class Actor:
    def __init__(self, worker: Any) -> None:
        self.worker, self.killed = worker, False

    def __getattr__(self, name: str) -> Any:
        if name == "where":  # the real one asks Ray's runtime context (which would start a Ray)
            place = {"node": "here", "ip": "127.0.0.1", "worker": str(self.worker.index)}
            return SimpleNamespace(remote=lambda: Ref(place))
        method = getattr(self.worker, name)

        def remote(*args: Any) -> Ref:
            return Ref(method(*[a.value if isinstance(a, Ref) else a for a in args]))

        return SimpleNamespace(remote=remote)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("out of memory")


def network() -> nn.Module:
    return build_model("cnn", SPEC, 0)


def recipe(net: Any = network) -> SiteRecipe:
    return SiteRecipe(RunConfig(), SPEC, Task.BINARY, 2, Preprocess(255.0, None), network=net)


SITES = {name: site_data(name, k) for k, name in enumerate(("site-a", "site-b", "site-c"))}


def pool(ray: StandInRay) -> RayPool:
    return RayPool(ray, ExecutionConfig(backend="ray"), "cpu")


def fedavg(transport: Any) -> dict[str, torch.Tensor]:
    strategy = FedAvg(network().state_dict())
    history = run_rounds(strategy, transport, list(SITES), RoundPlan(rounds=2, eval_every=1),
                         OPTIONS, np.random.default_rng(0))
    assert not any(r.failed for r in history)
    return strategy.global_state


def test_sites_on_workers_train_as_they_do_in_process():
    in_process = InProcessTransport({s: recipe().trainer(k, d, torch.device("cpu"))
                                     for k, (s, d) in enumerate(SITES.items())})
    ray = StandInRay(cpus=2.0)
    on_ray = pool(ray).transport(SITES, recipe(), None)
    expected, got = fedavg(in_process), fedavg(on_ray)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert (on_ray.bytes_up, on_ray.bytes_down) == (in_process.bytes_up, in_process.bytes_down)
    # one put per distinct model sent (the initial one, after round 1 (scored, then trained on),
    # after round 2), the recipe and each site's data once
    assert ray.puts == 3 + 1 + len(SITES)


def test_sites_stay_on_worker_k_mod_w_and_share_its_model():
    workers = pool(StandInRay(cpus=2.0))
    transport = workers.transport(SITES, recipe(), None)
    assert [transport.placement(s)["worker"] for s in SITES] == ["0", "1", "0"]
    first = workers.workers[0].worker
    assert len(first.models) == 1  # one network for its two sites
    sites = [first.sites[0, "site-a"], first.sites[0, "site-c"]]
    assert sites[0].model is sites[1].model


def test_a_sites_error_comes_back_as_the_error_it_raised():
    transport = pool(StandInRay()).transport(SITES, recipe(), None)
    with pytest.raises(DataError, match="site-a has no test split"):
        transport.evaluate("site-a", network().state_dict(), "test")


def test_a_crash_at_a_site_is_that_sites_transport_error():
    transport = pool(StandInRay()).transport(SITES, recipe(Broken), None)
    with pytest.raises(TransportError, match="site site-b failed: RuntimeError: out of memory"):
        transport.train("site-b", Broken().state_dict(), OPTIONS)


def test_a_dead_worker_is_a_transport_error_of_its_site():
    transport = pool(StandInRay()).transport(SITES, recipe(), None)
    dead = Ref(error=StandInRayError("The actor died unexpectedly"))
    transport._pending["site-a"] = dead
    with pytest.raises(TransportError, match="site-a: its Ray worker failed"):
        transport.train("site-a", network().state_dict(), OPTIONS)


def test_closing_the_pool_stops_its_workers():
    workers = pool(StandInRay())
    workers.transport(SITES, recipe(), None)
    actors = list(workers.workers)
    workers.close()
    assert actors and all(a.killed for a in actors) and not workers.workers
