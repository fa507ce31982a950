"""Early stopping on the federated validation score: the run ends once the score has gone
`patience` scored rounds without improving (Prechelt 1998's patience rule), so a federation that
has peaked stops spending its sites' compute, and the round budget becomes a cap.

The score of a round is the mean of the AUCs the sites report on their own validation splits (a
site whose split holds one class has none and is left out); the sites' test data plays no part.
Where no split scored has an AUC the round counts as one without improvement: nothing shows that
more rounds help, so patience ends the run at min_rounds.
keep_best (server/best_model.py) keeps the best round's model by the same score.

The baselines stop by the same rule on their own validation: the pooled model on the union of the
sites' splits (an EarlyStop like the federation's), each local-only site on its own split
(SiteEarlyStop), so every arm of a comparison is selected alike and none trains past its peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from medfed.types import Metrics, SiteId


def validation_score(val: dict[SiteId, Metrics]) -> float | None:
    """The mean validation AUC over the sites that have one; None when no site has one."""
    aucs = [m["auc"] for m in val.values() if m.get("auc") is not None and math.isfinite(m["auc"])]
    return sum(aucs) / len(aucs) if aucs else None


class EarlyStop:
    """Counts the scored rounds since the best validation score; `reached` once they number
    `patience` and at least `min_rounds` rounds have run. Rounds that were not scored
    (eval_every > 1) neither count nor reset."""

    def __init__(self, patience: int, earlier: Iterable[dict[SiteId, Metrics]] = (),
                 min_rounds: int = 0) -> None:
        """earlier: the validation results of the rounds already run (a resumed run), in order,
        so a run stopped early stays stopped and a resumed one counts from where it was."""
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.patience, self.min_rounds = patience, min_rounds
        self.best: float | None = None
        self.since_best = self.rounds = 0
        for val in earlier:
            self.record(val)

    def record(self, val: dict[SiteId, Metrics]) -> None:
        """One round's validation results: {} when the round was not scored (eval_every > 1, or the
        evaluation failed), which neither counts nor resets. Results without an AUC (every split
        scored holds one class) are no evidence of improvement and count: such a run or local-only
        site stops at min_rounds, as with fixed rounds, instead of training the cap."""
        self.rounds += 1
        if not val:
            return
        score = validation_score(val)
        if score is not None and (self.best is None or score > self.best):
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1

    def stopped_early(self, rounds_run: int, cap: int) -> dict | None:
        """summary.json's stopped_early when the stop ended the run before its cap; else None."""
        if not self.reached or rounds_run >= cap:
            return None
        return {"rounds_run": rounds_run, "of": cap, "patience": self.patience,
                "best_validation_auc": self.best}

    @property
    def reached(self) -> bool:
        return self.since_best >= self.patience and self.rounds >= self.min_rounds

    def training(self, sites: Sequence[SiteId]) -> list[SiteId]:
        """The sites that still train: all of them until the run stops."""
        return list(sites)


class SiteEarlyStop:
    """EarlyStop for each site on its own validation split, for models that never leave their site
    (the local-only baseline): a site whose own score has peaked stops training, and the run ends
    once every site has stopped."""

    def __init__(self, sites: Sequence[SiteId], patience: int, min_rounds: int = 0) -> None:
        self.patience = patience
        self.each = {site: EarlyStop(patience, min_rounds=min_rounds) for site in sites}

    def record(self, val: dict[SiteId, Metrics]) -> None:
        for site, stop in self.each.items():
            if not stop.reached:  # a round without the site's score still counts as run
                stop.record({site: val[site]} if site in val else {})

    @property
    def reached(self) -> bool:
        return all(stop.reached for stop in self.each.values())

    def training(self, sites: Sequence[SiteId]) -> list[SiteId]:
        return [site for site in sites if not self.each[site].reached]

    def rounds_run(self) -> dict[SiteId, int]:
        return {site: stop.rounds for site, stop in self.each.items()}

    def stopped_early(self, rounds_run: int, cap: int) -> dict | None:
        """EarlyStop's record with each site's rounds; None when every site ran the cap (rounds_run:
        the run's, for the same signature; each site's own count is what tells)."""
        rounds = self.rounds_run()
        if all(n >= cap for n in rounds.values()):
            return None
        return {"rounds_run": rounds, "of": cap, "patience": self.patience}
