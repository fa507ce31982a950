"""Live progress (rich) of rounds, sites and losses (console.py prints the final results)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medfed.server.round_loop import RoundResult
from medfed.types import SiteId


class RichRoundProgress:
    """A RoundObserver drawing one progress bar per training run (federated or baseline)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("{task.description:<16}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                 TimeElapsedColumn(), console=console)
        self._task = None

    def __enter__(self) -> RichRoundProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._end_run()
        self.progress.stop()

    def start_run(self, name: str, rounds: int) -> RichRoundProgress:
        self._end_run()
        self._task = self.progress.add_task(name, total=rounds, status="")
        return self

    def _end_run(self) -> None:
        """Stop the last run's clock: a run stopped early (patience) never fills its bar, and its
        time would otherwise go on counting through the runs after it."""
        if self._task is not None:
            self.progress.stop_task(self._task)

    def round_started(self, round_index: int, sites: list[SiteId]) -> None:
        self.progress.update(self._task, status=f"round {round_index + 1}: {len(sites)} sites")

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None:
        text = "failed" if loss is None else f"loss {loss:.3f}"
        self.progress.update(self._task, status=f"round {round_index + 1}: {site} {text}")

    def round_finished(self, result: RoundResult) -> None:
        aucs = [m.get("auc", math.nan) for m in result.val.values()]
        val = f"val AUC {_nanmean(aucs):.3f}" if aucs else ""
        self.progress.update(self._task, advance=1, status=f"round {result.round + 1} {val}")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
