"""Model selection for one training: which model is kept (keep_best, server/best_model.py) and
when training stops (patience, server/early_stop.py), for the federation and its baselines alike.

The federation is judged on the federated validation score, the pooled baseline on its own split
(the union of the sites'), each local-only site on its own: one rule for every arm, so the gaps
between them measure federation, not model selection.
"""

from __future__ import annotations

from pathlib import Path

from medfed.algorithms.ensemble import LocalEnsemble
from medfed.algorithms.strategy import Strategy
from medfed.config import FederationConfig
from medfed.server.best_model import BestPerSite, BestValidation
from medfed.server.early_stop import EarlyStop, SiteEarlyStop
from medfed.server.round_loop import RoundObserver, RoundResult
from medfed.types import Prediction, SiteId


def keeps_best(fed: FederationConfig, strategy: Strategy, baseline: bool) -> bool:
    """keep_best holds for the baselines too (pooled on its validation split, the sites' union;
    each local-only site on its own), or the gaps to them would measure model selection, not
    federation."""
    local = baseline and isinstance(strategy, LocalEnsemble)
    return bool(fed.keep_best) and (strategy.prediction is Prediction.GLOBAL or local)


def keeper(fed: FederationConfig, strategy: Strategy, baseline: bool, observer: RoundObserver | None,
           checkpoints: Path | None, resumed: bool) -> BestValidation | BestPerSite | None:
    if not keeps_best(fed, strategy, baseline):
        return None
    if isinstance(strategy, LocalEnsemble):
        return BestPerSite(strategy, observer)
    return BestValidation(strategy, observer, checkpoints, resumed)


def stop_rule(fed: FederationConfig, strategy: Strategy, sites: list[SiteId], baseline: bool,
              earlier: list[RoundResult]) -> EarlyStop | SiteEarlyStop | None:
    """patience, for the baselines by the same rule as for the federation (server/early_stop.py)."""
    if not fed.patience:
        return None
    if baseline and isinstance(strategy, LocalEnsemble):
        return SiteEarlyStop(sites, fed.patience, fed.min_rounds or 0)
    return EarlyStop(fed.patience, [r.val for r in earlier], fed.min_rounds or 0)
