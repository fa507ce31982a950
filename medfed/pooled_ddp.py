"""The pooled baseline: every site's training data in one place, the centralized upper reference.
One seam for `medfed run` and `medfed compare`: train_pooled().

With [execution] pooled_workers = 1 (the default) the pooled site trains in this process, as any
site does. With N > 1 it trains with torch.distributed DistributedDataParallel over N local worker
processes (pooled_workers.py): "centralized multi-node" in the radiology papers' tables, beside
single-node and federated. The round loop, FedAvg over the one pooled site and the scoring are the
same either way; only the site's training is spread, and each worker takes its shard of the global
batches the single process would train on (client/sharded_trainer.py), so the model is the same
within floating-point tolerance (tests/test_pooled_ddp.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from medfed.client.sharded_trainer import has_batch_norm
from medfed.data.dataset import Federation, Samples, SiteData
from medfed.errors import ConfigError
from medfed.experiment import POOLED, Outcome, Setup, site_recipe, site_trainer, train
from medfed.pooled_record import PooledExecution
from medfed.server.round_loop import RoundObserver
from medfed.transport.inprocess import InProcessTransport
from medfed.types import SiteId


@dataclass
class Pooled:
    """The pooled baseline's training run, and how it ran."""

    outcome: Outcome
    execution: PooledExecution
    wall_seconds: float  # the workers' start-up included

    def record(self) -> dict[str, Any]:
        return self.execution.record(self.wall_seconds)


def pooled_site(federation: Federation) -> dict[SiteId, SiteData]:
    """All sites' training and validation data in one place: the centralized upper reference."""
    sites = federation.sites.values()
    return {POOLED: SiteData(POOLED, Samples.concat([s.train for s in sites]),
                             Samples.concat([s.val for s in sites]))}


def check_pooled_workers(setup: Setup) -> None:
    """Refuse, before anything trains, a multi-node pooled baseline that could not equal the
    single-process one: batch norm over shards needs SyncBatchNorm, which gloo (CPU) lacks."""
    workers = setup.config.execution.pooled_workers
    if workers <= 1:
        return
    if setup.predictor.device.type != "cuda" and has_batch_norm(setup.predictor.model):
        raise ConfigError(f"--pooled-workers {workers} on CPU needs a model without batch norm "
                          "(SyncBatchNorm is CUDA-only): use --norm group or instance, "
                          "or --pooled-workers 1")


def train_pooled(setup: Setup, observer: RoundObserver | None = None) -> Pooled:
    """The pooled baseline under the same budget as the federation (FedAvg over one site holding
    every site's training and validation data), in one process or over DDP workers."""
    start = time.perf_counter()
    sites = pooled_site(setup.federation)
    workers = setup.config.execution.pooled_workers
    if workers <= 1:
        outcome = train(setup, "fedavg", sites, POOLED, observer, baseline=True)
        return Pooled(outcome, PooledExecution(), time.perf_counter() - start)
    check_pooled_workers(setup)
    from medfed.pooled_workers import PooledWorkers  # torch.distributed only when asked for

    local = site_trainer(setup, 0, sites[POOLED])
    with PooledWorkers(local, site_recipe(setup, None), workers) as pool:
        execution = PooledExecution(workers, pool.backend, pool.startup_seconds,
                                    tuple(pool.worker_startup_seconds))
        outcome = train(setup, "fedavg", sites, POOLED, observer, baseline=True,
                        transport=InProcessTransport({POOLED: pool}))
    return Pooled(outcome, execution, time.perf_counter() - start)
