"""Keeping the best-validation model: early stopping's model selection (Prechelt 1998), on the
federated validation score, so a model that starts to overfit its sites' small training splits is
not the one kept.

The score of a round is server/early_stop.py's validation_score: the mean of the sites' own
validation AUCs; the sites' test data plays no part. Models that never leave their site (the
local-only baseline) are kept site by site, each on its own validation AUC (BestPerSite).
"""

from __future__ import annotations

import os
from pathlib import Path

from medfed.algorithms.checkpoint import Checkpoint, from_bytes, to_bytes
from medfed.algorithms.ensemble import LocalEnsemble
from medfed.algorithms.strategy import Strategy
from medfed.server.early_stop import validation_score
from medfed.server.round_loop import RoundObserver, RoundResult, SilentObserver
from medfed.types import SiteId, StateDict

BEST = "best.safetensors"  # the best round's snapshot beside a run's checkpoint (--resume reads it)


class BestValidation:
    """A round observer that snapshots the strategy whenever the validation score improves;
    `restore_best()` puts the best snapshot back (the last round's model if none scored)."""

    def __init__(self, strategy: Strategy, inner: RoundObserver | None = None,
                 folder: Path | None = None, resume: bool = False) -> None:
        """folder: where the best snapshot is kept as it changes, so that a resumed run (resume)
        still knows the best of the rounds before its interruption."""
        self.strategy, self.inner = strategy, inner or SilentObserver()
        self.best_score: float | None = None
        self.best_round: int | None = None
        self._snapshot: Checkpoint | None = None
        self.folder = folder
        if folder is not None and resume and (folder / BEST).is_file():
            self._snapshot, meta = from_bytes((folder / BEST).read_bytes())
            self.best_score, self.best_round = meta["score"], meta["round"]

    def round_started(self, round_index: int, sites: list[SiteId]) -> None:
        self.inner.round_started(round_index, sites)

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None:
        self.inner.site_finished(round_index, site, loss)

    def round_finished(self, result: RoundResult) -> None:
        score = validation_score(result.val)
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_round = score, result.round
            self._snapshot = self.strategy.checkpoint()
            if self.folder is not None:  # atomically: an interrupted write keeps the previous one
                tmp = self.folder / (BEST + ".tmp")
                tmp.write_bytes(to_bytes(self._snapshot, {"score": score, "round": result.round}))
                os.replace(tmp, self.folder / BEST)
        self.inner.round_finished(result)

    def kept(self) -> dict | None:
        """summary.json's kept_round: the best round (from 1) and its score; None if none scored."""
        if self.best_round is None:
            return None
        return {"round": self.best_round + 1, "validation_auc": self.best_score}

    def restore_best(self) -> None:
        if self._snapshot is not None:
            self.strategy.restore(self._snapshot)


class BestPerSite:
    """keep_best for the local-only baseline: each site's model of the round with that site's best
    validation AUC; `restore_best()` puts them back (a site that never scored keeps its last)."""

    def __init__(self, strategy: LocalEnsemble, inner: RoundObserver | None = None) -> None:
        self.strategy, self.inner = strategy, inner or SilentObserver()
        self._best: dict[SiteId, tuple[float, int, StateDict]] = {}  # score, round, model

    def round_started(self, round_index: int, sites: list[SiteId]) -> None:
        self.inner.round_started(round_index, sites)

    def site_finished(self, round_index: int, site: SiteId, loss: float | None) -> None:
        self.inner.site_finished(round_index, site, loss)

    def round_finished(self, result: RoundResult) -> None:
        for site, metrics in result.val.items():
            score = validation_score({site: metrics})
            if score is not None and (site not in self._best or score > self._best[site][0]):
                state = {k: v.clone() for k, v in self.strategy.site_state(site).items()}
                self._best[site] = (score, result.round, state)
        self.inner.round_finished(result)

    def kept(self) -> dict[SiteId, dict]:
        """Each site's kept round (from 1) and its validation AUC, as BestValidation.kept()."""
        return {site: {"round": r + 1, "validation_auc": score}
                for site, (score, r, _) in self._best.items()}

    def restore_best(self) -> None:
        for site, (_, _, state) in self._best.items():
            self.strategy.put_site_state(site, state)
