"""One worker's part of a model trained with DistributedDataParallel over N workers: the pooled
baseline's "centralized multi-node" training (pooled_ddp.py starts the workers).

Every worker holds the same data and draws, from the same seeds as SiteTrainer, the same global
batches and the same augmentation affines; it trains on its own shard of each global batch
(rows [rank * b // N, (rank + 1) * b // N)). Its shard's mean loss is weighted by
shard size * N / b, so DDP's average of the workers' gradients is the gradient of the global
batch's mean loss: the model each step makes is the model SiteTrainer makes from the same global
batch, up to the order of floating-point sums (tests/test_pooled_ddp.py).

Batch norm would see only a shard's statistics: on CUDA the model's BatchNorm layers become
SyncBatchNorm (the global batch's statistics); gloo on CPU has no SyncBatchNorm, and pooled_ddp.py
refuses such a model before anything trains.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medfed.client.trainer import SiteTrainer, TrainOptions, round_batches
from medfed.types import Update


def shard_rows(batch: int, rank: int, world: int) -> slice:
    """This worker's rows of a global batch of `batch` samples (every worker's slice together
    cover the batch once; with batch < world some workers get none)."""
    return slice(rank * batch // world, (rank + 1) * batch // world)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class ShardedTrainer:
    """The pooled site's trainer on one of `world` DDP workers (the process group is up)."""

    def __init__(self, trainer: SiteTrainer, rank: int, world: int) -> None:
        self.trainer = trainer
        self.rank, self.world = rank, world
        cuda = trainer.device.type == "cuda"
        if cuda:  # the global batch's statistics, as one process computes them
            trainer.model = nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model)
        self.ddp = DistributedDataParallel(trainer.model,
                                           device_ids=[trainer.device] if cuda else None)
        # The shape of one preprocessed input, for a worker whose shard of a batch is empty.
        first = trainer.build_batch(trainer.data.train, np.arange(1), None)[0] if len(
            trainer.data.train) else torch.zeros(1)
        self.input_shape = tuple(first.shape[1:])

    def train(self, state: dict[str, torch.Tensor], options: TrainOptions) -> Update:
        """One round of the pooled site, as SiteTrainer.train (no FedProx or SCAFFOLD: the
        pooled baseline is plain FedAvg over one site)."""
        if options.proximal_mu or options.scaffold:
            raise ValueError("the multi-node pooled baseline trains plain FedAvg over one site")
        t = self.trainer
        t.reseed(options.round)
        t.model.load_state_dict(state)
        t.model.train()
        optimizer = t.optimizer(options)
        loss_sum = torch.zeros((), dtype=torch.float64, device=t.device)  # sum of global batch means
        steps = 0
        for index in round_batches(len(t.data.train), options, t.shuffle):
            affines = t.augmentation(len(index))  # the whole batch's draws: the same stream
            rows = shard_rows(len(index), self.rank, self.world)
            optimizer.zero_grad(set_to_none=True)
            shard_loss, weight = self._shard_loss(index[rows], affines, rows, len(index), options)
            (shard_loss * weight).backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            loss_sum += shard_loss.detach().double() * weight / self.world
            steps += 1
        dist.all_reduce(loss_sum)  # each worker's part of every global batch's mean loss
        state_out = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
        return Update(site=t.site, state=state_out, n_samples=len(t.data.train), n_steps=steps,
                      metrics={"train_loss": float(loss_sum) / max(steps, 1)})

    def _shard_loss(self, shard: np.ndarray, affines: np.ndarray | None, rows: slice, batch: int,
                    options: TrainOptions) -> tuple[torch.Tensor, float]:
        """(this shard's mean task loss, its weight shard size * N / batch). An empty shard
        still runs DDP's forward and backward (every worker joins every all-reduce), with a
        zero loss on zero rows."""
        t = self.trainer
        if len(shard) == 0:
            empty = torch.zeros((0, *self.input_shape), device=t.device)
            return self.ddp(empty).sum(), 0.0
        x, y = t.build_batch(t.data.train, shard, None if affines is None else affines[rows])
        return t.task_loss(self.ddp(x), y, options), len(shard) * self.world / batch
