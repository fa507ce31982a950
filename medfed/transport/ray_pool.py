"""The Ray backend's pool of workers: at most max_workers Ray actors, each reserving
cpus_per_site CPUs and gpus_per_site GPUs, serving any number of sites (100 sites are not 100
processes). Site k of a training run lives on worker k mod W for the whole run, so what a site
keeps between rounds stays with it; each site's data is put in Ray's object store once per run
(the baselines reuse the federation's), never sent per round.

Ray is imported here, only when a run asks for backend = "ray". Without --ray-address a local Ray
starts for the run and stops with it (on error too); with it, the run joins that cluster and
leaves it running. What the driver hands a worker besides models (the site recipe: the run's
configuration; the site's data) travels through Ray's own object store: a Ray cluster is one
user's machines, not a trust boundary. Models and updates travel as safetensors bytes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medfed.config import RunConfig
from medfed.config_execution import RAY_INSTALL, ExecutionConfig
from medfed.data.dataset import SiteData
from medfed.errors import ConfigError
from medfed.simulated_site import SiteRecipe
from medfed.transport.ray_transport import SITE_ERRORS, RayTransport
from medfed.transport.ray_worker import SiteWorker
from medfed.types import SiteId

if TYPE_CHECKING:
    from medfed.privacy.mechanisms import Mechanisms

CONNECT_SECONDS = 5
READY_SECONDS = 300  # a worker that cannot start in this time will not: the cluster is too small
# Privacy protocols whose server calls every site's wrapper directly, in its own process.
IN_PROCESS_ONLY = ("secure_aggregation", "homomorphic")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_INSTALL) from None
    return ray


def check_supported(config: RunConfig) -> None:
    for name in IN_PROCESS_ONLY:
        if getattr(config.privacy, name):
            raise ConfigError(f"privacy {name} does not run on backend = \"ray\" (its protocol "
                              f"calls every site from the server's process); use backend = "
                              f"\"inprocess\"")


def worker_limit(resources: dict[str, float], execution: ExecutionConfig) -> int:
    """How many workers the cluster holds at once: CPUs / cpus_per_site (and GPUs /
    gpus_per_site), at most max_workers."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if cpus < execution.cpus_per_site:
        raise ConfigError(f"cpus_per_site = {execution.cpus_per_site:g}, but the Ray cluster has "
                          f"{cpus:g} CPUs; lower --cpus-per-site")
    limit = int(cpus // execution.cpus_per_site)
    if execution.gpus_per_site > 0:
        if gpus < execution.gpus_per_site:
            raise ConfigError(f"gpus_per_site = {execution.gpus_per_site:g}, but the Ray cluster "
                              f"has {gpus:g} GPUs; use --gpus-per-site 0 to train on CPUs")
        limit = min(limit, int(gpus // execution.gpus_per_site))
    return min(limit, execution.max_workers or limit)


def worker_device(device: str, execution: ExecutionConfig) -> str:
    """What a worker passes to pick_device: a GPU only if it reserved a share of one (Ray then
    shows it just that GPU), so workers never crowd onto a GPU the cluster did not give them."""
    if execution.gpus_per_site > 0:
        return device
    if device in ("cuda", "mps"):
        raise ConfigError(f"--device {device} on backend = \"ray\" needs --gpus-per-site > 0 "
                          "(the GPU share each worker reserves), e.g. --gpus-per-site 0.5")
    return "cpu" if device == "auto" else device


def connect(ray: Any, execution: ExecutionConfig) -> bool:
    """Join the cluster at ray_address, or start a local Ray; False if this process was already
    connected (the caller's own session: used, and left as it was)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if execution.ray_address is None:
        # "local": a new Ray for this run, never another program's that happens to be running here
        cpus = max(os.cpu_count() or 1, (execution.max_workers or 0) * execution.cpus_per_site)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
        return True
    try:
        _check_answers(execution.ray_address)
        ray.init(address=execution.ray_address, **quiet)
    except (ConnectionError, ValueError, RuntimeError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"cannot join the Ray cluster at {execution.ray_address} ({reason}); "
                          "start one with `ray start --head`, or leave out --ray-address") from None
    return True


def _check_answers(address: str) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "/" not in host:  # not "auto", not a ray:// client address
        with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS):
            pass


class RayPool:
    def __init__(self, ray: Any, execution: ExecutionConfig, device: str) -> None:
        self.ray, self.execution, self.device = ray, execution, device
        self.limit = worker_limit(ray.cluster_resources(), execution)
        threads = max(1, int(execution.cpus_per_site))  # workers share cores, never oversubscribe
        self.threads = threads
        # No runtime_env: Ray already sets a worker's OMP_NUM_THREADS from its num_cpus, and the
        # worker sets torch's threads itself (ray_worker.py); a runtime_env of env_vars alone made
        # Ray start a dedicated worker process per actor, +1.1 s before the first round here.
        self.actor = ray.remote(SiteWorker).options(
            num_cpus=execution.cpus_per_site, num_gpus=execution.gpus_per_site,
            scheduling_strategy="SPREAD", max_restarts=0)
        self.workers: list[Any] = []
        self.places: list[dict[str, str]] = []  # where each worker runs
        self.runs = 0
        self._data: dict[int, tuple[SiteData, Any]] = {}  # id(data) -> (data, its object ref)

    @classmethod
    @contextmanager
    def open(cls, config: RunConfig) -> Iterator[RayPool]:
        check_supported(config)
        device = worker_device(config.device, config.execution)
        ray = import_ray()
        owns = connect(ray, config.execution)
        pool = None
        try:
            pool = cls(ray, config.execution, device)
            yield pool
        finally:
            if pool is not None:
                pool.close()
            if owns:
                ray.shutdown()

    def transport(self, sites: dict[SiteId, SiteData], recipe: SiteRecipe,
                  privacy: Mechanisms | None) -> RayTransport:
        """One training run's sites, placed on the workers (k mod W) and built there."""
        self._grow(min(len(sites), self.limit))
        run, self.runs = self.runs, self.runs + 1
        recipe_ref, federation = self.ray.put(recipe), list(sites)
        placed = {site: k % len(self.workers) for k, site in enumerate(sites)}
        built = [self.workers[placed[site]].add_site.remote(
                     run, recipe_ref, privacy is not None, federation, k, self._put(data))
                 for k, (site, data) in enumerate(sites.items())]
        for reply in self.ray.get(built):
            if reply:  # a site that cannot be built (e.g. a model DP-SGD refuses): the run's error
                error = json.loads(reply)
                raise SITE_ERRORS[error["error"]](error["message"])
        return RayTransport(self.ray, run, {s: self.workers[w] for s, w in placed.items()},
                            {s: self.places[w] for s, w in placed.items()})

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers, self.places, self._data = [], [], {}

    def _put(self, data: SiteData) -> Any:
        if id(data) not in self._data:
            self._data[id(data)] = (data, self.ray.put(data))
        return self._data[id(data)][1]

    def _grow(self, size: int) -> None:
        """Start workers up to `size` and wait until each runs (and says where)."""
        new = [self.actor.remote(i, self.threads, self.device)
               for i in range(len(self.workers), size)]
        if not new:
            return
        try:
            self.places += self.ray.get([w.where.remote() for w in new], timeout=READY_SECONDS)
        except self.ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"Ray could not start {len(new)} worker(s) of {self.execution.cpus_per_site:g} CPUs "
                f"and {self.execution.gpus_per_site:g} GPUs in {READY_SECONDS} s; lower "
                "--max-workers, --cpus-per-site or --gpus-per-site") from None
        self.workers += new
