"""Live progress (rich) of rounds, sites and losses (console.py prints the final results)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medfed.server.round_loop import RoundResult
from medfed.types import SiteId


class RunBar:
    """One training run's line of progress: a RoundObserver that turns each event into an advance
    of the bar and a status text, and hands them to show (a rich task here, or a queue to the
    process that draws the bars: baselines_beside.py)."""

    def __init__(self, show: Callable[[int, str], None], finish: Callable[[], None]) -> None:
        self.show = show  # (advance, status)
        self._finish = finish
        self.finished = False

    def finish(self) -> None:
        """Stop the run's clock: a run stopped early (patience) never fills its bar, and its time
        would otherwise go on counting through the runs after it."""
        if not self.finished:
            self.finished = True
            self._finish()

    def round_started(self, round_index: int, sites: list[SiteId]) -> None:
        self.show(0, f"round {round_index + 1}: {len(sites)} sites")

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None:
        text = "failed" if loss is None else f"loss {loss:.3f}"
        self.show(0, f"round {round_index + 1}: {site} {text}")

    def round_finished(self, result: RoundResult) -> None:
        aucs = [m.get("auc", math.nan) for m in result.val.values()]
        val = f"val AUC {_nanmean(aucs):.3f}" if aucs else ""
        self.show(1, f"round {result.round + 1} {val}")


class SerialRuns:
    """Training runs that follow one another: starting one finishes the last (its clock stops).
    beside(name, rounds) makes a run's bar; where it is drawn is the subclass's."""

    def __init__(self) -> None:
        self._last: RunBar | None = None

    def start_run(self, name: str, rounds: int) -> RunBar:
        self.finish_last()
        self._last = self.beside(name, rounds)
        return self._last

    def finish_last(self) -> None:
        if self._last is not None:
            self._last.finish()

    def beside(self, name: str, rounds: int) -> RunBar:
        raise NotImplementedError


class RichRoundProgress(SerialRuns):
    """One progress bar per training run (federated or baseline), drawn on the console."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.progress = Progress(TextColumn("{task.description:<16}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                 TimeElapsedColumn(), console=console)
        self._bars: list[RunBar] = []

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        for bar in self._bars:
            bar.finish()
        self.progress.stop()

    def beside(self, name: str, rounds: int) -> RunBar:
        """A run alongside the others (another process's): its clock runs until its finish()."""
        task = self.progress.add_task(name, total=rounds, status="")
        bar = RunBar(lambda advance, status: self.progress.update(task, advance=advance,
                                                                   status=status),
                     lambda: self.progress.stop_task(task))
        self._bars.append(bar)
        return bar


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
