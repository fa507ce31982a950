"""N local worker processes that train the pooled site together with DistributedDataParallel
(client/sharded_trainer.py), seen by the round loop as one site: PooledWorkers is a LocalSite.

The workers start once per pooled baseline (torch.multiprocessing spawn), join one process group
(gloo on CPU, NCCL on CUDA, rendezvous through a file in a private temporary folder, traffic on the
loopback interface), read the pooled training data from .npy files that folder holds, and then
train one round per message: every worker gets the round's state and options, and rank 0 answers
with the trained state. Messages are safetensors bytes and JSON, as the in-process transport's.

Local processes only: with backend = "ray" the pooled baseline's workers are still processes of
this machine (the federated sites are what Ray spreads over a cluster).
"""

from __future__ import annotations

import os
import queue
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

from medfed.client.sharded_trainer import ShardedTrainer
from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.data.dataset import Samples, SiteData
from medfed.errors import TransportError
from medfed.simulated_site import SiteRecipe
from medfed.transport.codec import decode_metadata, decode_state, encode_state
from medfed.types import Metrics, StateDict, Update

POLL_SECONDS = 0.5  # how often a wait for the workers checks that none of them has died
STARTUP_TIMEOUT = 300.0  # seconds for the workers to import, load their data and join the group
STOP_TIMEOUT = 30.0  # seconds for the workers to leave after the last round, before termination


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker is started with (pickled by spawn, within this run's own processes)."""

    recipe: SiteRecipe
    site: str
    folder: str  # train_x.npy, train_y.npy and the rendezvous file
    backend: str  # gloo | nccl
    device: str  # cpu | cuda
    threads: int  # torch threads per worker: the cores shared out, not oversubscribed
    parent: int  # the run's process id: a worker whose parent has gone leaves


class PooledWorkers:
    """The pooled site, trained by `world` DDP workers; evaluate() scores in this process."""

    def __init__(self, local: SiteTrainer, recipe: SiteRecipe, world: int) -> None:
        self.local = local  # the same site built here: its id, its data and its evaluation
        self.recipe = recipe  # how each worker builds it again (site index 0)
        self.world = world
        self.backend = "nccl" if local.device.type == "cuda" else "gloo"
        self.startup_seconds = 0.0  # spawn until every worker has joined the process group
        self.worker_startup_seconds: list[float] = []  # spawn until each worker was ready
        self._folder = tempfile.TemporaryDirectory(prefix="medfed-pooled-")
        self._context: Any = None
        self._inboxes: list[Any] = []
        self._outbox: Any = None

    @property
    def site(self) -> str:
        return self.local.site

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _start(self) -> None:
        folder = Path(self._folder.name)
        np.save(folder / "train_x.npy", self.local.data.train.x, allow_pickle=False)
        np.save(folder / "train_y.npy", self.local.data.train.y, allow_pickle=False)
        plan = WorkerPlan(self.recipe, self.site, str(folder), self.backend,
                          self.local.device.type, max(1, torch.get_num_threads() // self.world),
                          os.getpid())
        spawn = mp.get_context("spawn")
        self._inboxes = [spawn.Queue() for _ in range(self.world)]
        self._outbox = spawn.Queue()
        started = time.time()
        self._context = mp.start_processes(_worker_main, (self.world, plan, self._inboxes,
                                                          self._outbox),
                                           nprocs=self.world, join=False, start_method="spawn")
        ready = [self._receive("ready", STARTUP_TIMEOUT) for _ in range(self.world)]
        self.startup_seconds = time.time() - started
        self.worker_startup_seconds = [at - started for _, at in sorted(ready)]

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        message = encode_state(state, {"options": asdict(options)})
        for inbox in self._inboxes:
            inbox.put(message)
        reply = self._receive("update", None)
        meta = decode_metadata(reply)
        return Update(site=self.site, state=decode_state(reply), n_samples=int(meta["n_samples"]),
                      n_steps=int(meta["n_steps"]), metrics=dict(meta["metrics"]))

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.local.evaluate(state, split)

    def _receive(self, kind: str, timeout: float | None) -> Any:
        """The next message of this kind from the workers; a worker that died raises here, with
        the last line of its error, instead of leaving this process waiting for ever."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            try:
                got, payload = self._outbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._check_alive()
                continue
            if got != kind:
                raise TransportError(f"pooled workers: expected '{kind}', got '{got}'")
            return payload
        raise TransportError(f"pooled workers: no '{kind}' within {timeout:g} s")

    def _check_alive(self) -> None:
        try:
            ended = self._context.join(timeout=0)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            # a worker raised or was killed; join() has ended the others
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise TransportError(f"a pooled DDP worker failed: {last}") from None
        if ended:
            raise TransportError("the pooled DDP workers ended before their work was done")

    def close(self) -> None:
        """Ask the workers to leave, wait STOP_TIMEOUT, then terminate any that is left."""
        if self._context is not None:
            for inbox in self._inboxes:
                inbox.put(None)
            deadline = time.monotonic() + STOP_TIMEOUT
            for process in self._context.processes:
                process.join(max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    process.terminate()
                    process.join(5)
            self._context = None
        self._folder.cleanup()


def _worker_main(rank: int, world: int, plan: WorkerPlan, inboxes: list[Any], outbox: Any) -> None:
    """One DDP worker: join the group, build the pooled site's trainer, train round after round."""
    torch.set_num_threads(plan.threads)
    loopback = _loopback_interface()
    if loopback:  # the workers talk over this machine's loopback only
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    folder = Path(plan.folder)
    dist.init_process_group(plan.backend, init_method=(folder / "rendezvous").as_uri(), rank=rank,
                            world_size=world, timeout=timedelta(seconds=STARTUP_TIMEOUT))
    try:
        device = (torch.device("cuda", rank % torch.cuda.device_count()) if plan.device == "cuda"
                  else torch.device("cpu"))
        x = np.load(folder / "train_x.npy", mmap_mode="r", allow_pickle=False)  # read, not copied
        y = np.load(folder / "train_y.npy", allow_pickle=False)
        data = SiteData(plan.site, Samples(x, y), Samples(x[:0], y[:0]))
        site = plan.recipe.trainer(0, data, device)  # the pooled site is the run's only site
        if not isinstance(site, SiteTrainer):
            raise TypeError("the pooled baseline is an honest site; got a wrapped one")
        trainer = ShardedTrainer(site, rank, world)
        outbox.put(("ready", (rank, time.time())))
        while (message := _next_message(inboxes[rank], plan.parent)) is not None:
            options = TrainOptions(**decode_metadata(message)["options"])  # type: ignore[arg-type]
            update = trainer.train(decode_state(message), options)
            if rank == 0:
                outbox.put(("update", encode_state(update.state, {
                    "n_samples": update.n_samples, "n_steps": update.n_steps,
                    "metrics": update.metrics})))
    finally:
        dist.destroy_process_group()


def _next_message(inbox: Any, parent: int) -> bytes | None:
    """The next round's message; None to leave, also when the run's process has gone (a killed
    run leaves no worker behind waiting for ever)."""
    while True:
        try:
            return inbox.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:
                return None


def _loopback_interface() -> str | None:
    """The name of this machine's loopback interface ("lo" on Linux, "lo0" on macOS)."""
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((n for n in names if n.startswith("lo")), None)
