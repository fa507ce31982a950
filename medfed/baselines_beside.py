"""The baselines in a process of their own, training while the federation trains.

A run's three arms (federated, local-only, pooled) are independent experiments on the same data. One
after another they leave cores idle: torch gains far less than 2x from a second thread on the small
models a simulation trains (the demo beside: 0.74-1.05x the time of one after another,
benchmarks/RESULTS.md). Beside each other, each process gets half the run's torch threads (torch's
default: one per core), fixed for the whole run, since a thread count that changed when the other
process finished would make the result depend on timing. The child process is spawned from this
run's own code, prepares the same setup from the same config and seed, trains with
baselines.train_baselines, reports progress as (bar, advance, status) events drawn by the parent's
bars, and sends back baselines.Baselines: summary records and probabilities (pickled by
multiprocessing between this run's own processes, as the pooled workers' start-up plan is).

The arms run one after another instead (the caller's fallback) where the split would not pay or
could not hold: one thread (OMP_NUM_THREADS=1), a GPU (the arms would share one device), the Ray
backend (the sites are spread already), a multi-node pooled baseline (its workers take the cores),
or an ensemble whose site models are the local-only baseline's.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import torch
from torch import multiprocessing as mp

from medfed.baselines import Baselines, reuses_federation, train_baselines
from medfed.config import RunConfig
from medfed.config_execution import INPROCESS
from medfed.errors import MedfedError
from medfed.progress import RichRoundProgress, RunBar, SerialRuns

POLL_SECONDS = 0.5  # how often a wait for the child checks that it is still alive
STOP_TIMEOUT = 10.0  # seconds for the child to exit, before it is terminated


@dataclass(frozen=True)
class Split:
    """Torch threads of this process (the federation) and of the baselines' process."""

    federation: int
    baselines: int


def split_for(config: RunConfig, device: torch.device, threads: int | None = None
              ) -> Split | None:
    """The torch threads of each arm when the baselines train beside the federation; None: one
    after the other (see the module's docstring for when). threads: the run's torch threads
    (default torch's own: the machine's cores, or OMP_NUM_THREADS), shared out, not added to."""
    threads = torch.get_num_threads() if threads is None else threads
    execution = config.execution
    if not (config.baselines and execution.baselines_beside) or threads < 2:
        return None
    if device.type != "cpu" or execution.backend != INPROCESS or execution.pooled_workers > 1:
        return None
    if reuses_federation(config):
        return None
    return Split(federation=threads - threads // 2, baselines=threads // 2)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """This process's torch threads for the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class BaselinesBeside:
    """The baselines' process: started on entry, with a thread here that draws its progress;
    result() waits for its Baselines. Leaving the block before (an error, Ctrl-C in the
    federation) stops it."""

    def __init__(self, config: RunConfig, threads: int, progress: RichRoundProgress) -> None:
        self.config = config
        self.threads = threads
        self.progress = progress
        self._bars: dict[str, RunBar] = {}
        self._result: Baselines | None = None
        self._failure = "it ended without a result"
        self._process: Any = None
        self._events: Any = None
        self._receiver: threading.Thread | None = None

    def __enter__(self) -> Self:
        spawn = mp.get_context("spawn")  # a fresh interpreter: no fork of torch's thread pools
        self._events = spawn.Queue()
        self._process = spawn.Process(target=_child_main, name="medfed-baselines", daemon=True,
                                      args=(self.config, self.threads, self._events))
        self._process.start()
        self._receiver = threading.Thread(target=self._receive, name="medfed-baselines-progress",
                                          daemon=True)
        self._receiver.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._result is None:  # the run ended before them (an error, Ctrl-C): not wanted
            self._process.terminate()
        self._process.join(timeout=STOP_TIMEOUT)  # after its result it only has to exit
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=STOP_TIMEOUT)
        if self._receiver is not None:
            self._receiver.join(timeout=STOP_TIMEOUT)
        self._events.close()
        self._events.cancel_join_thread()

    def result(self) -> Baselines:
        """The child's Baselines, once it has sent them; its failure is raised here."""
        assert self._receiver is not None, "result() inside the with block"
        self._receiver.join()
        if self._result is None:
            raise MedfedError(f"the baselines' process failed: {self._failure} (exit code "
                              f"{self._process.exitcode}); --no-baselines-beside trains them "
                              "in this process")
        return self._result

    def _receive(self) -> None:
        """Draw the child's progress until its result or its failure (or its death) arrives."""
        while True:
            try:
                event = self._events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._process.is_alive():
                    continue
                try:  # what it sent just before it ended may still be in the pipe
                    event = self._events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    return
            kind, *payload = event
            if kind == "result":
                self._result = payload[0]
                return
            if kind == "error":
                self._failure = payload[0]
                return
            self._draw(kind, *payload)

    def _draw(self, kind: str, name: str, *args: Any) -> None:
        if kind == "start":
            self._bars[name] = self.progress.beside(name, *args)
        elif kind == "show":
            self._bars[name].show(*args)
        elif kind == "finish":
            self._bars[name].finish()


class _QueueRuns(SerialRuns):
    """The child's side of the bars: each run's events go to the parent, which draws them."""

    def __init__(self, events: Any) -> None:
        super().__init__()
        self.events = events

    def beside(self, name: str, rounds: int) -> RunBar:
        self.events.put(("start", name, rounds))
        return RunBar(lambda advance, status: self.events.put(("show", name, advance, status)),
                      lambda: self.events.put(("finish", name)))


def _child_main(config: RunConfig, threads: int, events: Any) -> None:
    """The baselines' process: the same setup from the same config, its baselines, one message."""
    # Ctrl-C reaches the whole process group: the parent stops the run and then this process,
    # which would otherwise print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    try:
        from medfed.experiment import prepare

        runs = _QueueRuns(events)
        baselines = train_baselines(prepare(config), runs)
        runs.finish_last()
        events.put(("result", baselines))
    except Exception as exc:  # noqa: BLE001 - the parent reports it; a traceback here is lost
        events.put(("error", f"{type(exc).__name__}: {exc}"))
