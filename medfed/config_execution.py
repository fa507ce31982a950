"""[execution]: where a simulation's work runs. The in-process backend (the default) trains the
sites one after another in this process; the Ray backend hands them to a pool of Ray workers, on
this machine or a cluster. pooled_workers > 1 trains the pooled baseline with
torch.distributed (DistributedDataParallel) over that many workers: "centralized multi-node".

None of these settings changes what is computed: the same seed gives the same result on any
backend (tests/test_execution*.py). One caveat: torch's CPU kernels may round differently with a
different number of threads, as on a machine with another number of cores; baselines_beside gives
each of its two processes half the cores (tests/test_baselines_beside.py)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from medfed.config_checks import at_least, choice
from medfed.errors import ConfigError

INPROCESS = "inprocess"
RAY = "ray"
BACKENDS = (INPROCESS, RAY)
RAY_INSTALL = "--backend ray needs Ray, which is not installed here: pip install 'medfed[ray]'"


@dataclass(frozen=True)
class ExecutionConfig:
    backend: str = INPROCESS
    # ray: join this running cluster ("auto", or "HOST:PORT" of `ray start --head`); None starts a
    # local Ray for the run and stops it after.
    ray_address: str | None = None
    cpus_per_site: float = 1.0  # ray: CPUs one worker reserves while it trains a site
    gpus_per_site: float = 0.0  # ray: GPU share of a worker (0.5: two workers share a GPU)
    # ray: at most this many workers; a worker serves many sites in turn, so 100 sites do not mean
    # 100 processes. None: as many as the cluster's CPUs allow (CPUs / cpus_per_site).
    max_workers: int | None = None
    # The pooled baseline over this many DistributedDataParallel workers (1: one process).
    pooled_workers: int = 1
    # The baselines train in a process of their own while the federation trains, the machine's
    # cores shared between the two (baselines_beside.py); false: after the federation, here.
    baselines_beside: bool = True

    def __post_init__(self) -> None:
        choice("backend", self.backend, BACKENDS)
        if self.backend == RAY and importlib.util.find_spec("ray") is None:  # found, not imported
            raise ConfigError(RAY_INSTALL)
        if self.cpus_per_site <= 0:
            raise ConfigError(f"cpus_per_site must be > 0, got {self.cpus_per_site}")
        if self.gpus_per_site < 0:
            raise ConfigError(f"gpus_per_site must be >= 0, got {self.gpus_per_site}")
        if self.max_workers is not None:
            at_least("max_workers", self.max_workers, 1)
        at_least("pooled_workers", self.pooled_workers, 1)
        ray_only = {"ray_address": self.ray_address is not None, "max_workers":
                    self.max_workers is not None, "cpus_per_site": self.cpus_per_site != 1.0,
                    "gpus_per_site": self.gpus_per_site != 0.0}
        for key, given in ray_only.items():
            if given and self.backend != RAY:
                raise ConfigError(f"{key} applies to backend = \"ray\" only (got backend = "
                                  f"\"{self.backend}\")")
