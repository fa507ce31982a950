"""What a clinician reads first of a `medfed run`: each model's operating point, chosen on validation
data and read on the test set (evaluation/operating_point.py), and the verdict line: did
federation beat the best single site, how far is it from pooling (evaluation/verdict.py).

Where each model's threshold is chosen (never on the test set):
- the federated model and the pooled one: every site's validation split, each site's cases scored
  by the model that site would use (experiment.predict_validation);
- a site's local-only model: its own site's validation split (the only data it could see), which
  also ranks the sites for "best single site".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medfed.baselines import Baselines
from medfed.evaluation.metrics import compute_metrics
from medfed.evaluation.operating_point import ALL_SITES, OWN_SITE, not_binary, operating_point
from medfed.evaluation.operating_rule import OperatingRule
from medfed.evaluation.verdict import run_verdict
from medfed.experiment import Outcome, Setup, predict_validation
from medfed.types import SiteId, Task


@dataclass
class Reading:
    """summary.json's operating points (federated; pooled and each local model) and verdict."""

    federated: dict[str, Any]
    verdict: dict[str, Any]
    pooled: dict[str, Any] | None = None
    local: dict[SiteId, dict[str, Any]] = field(default_factory=dict)
    local_val_auc: dict[SiteId, float] = field(default_factory=dict)  # ranks "best single site"


def read_run(setup: Setup, rule: OperatingRule, federated: Outcome,
             baselines: Baselines | None) -> Reading:
    """baselines: the pooled and local-only models' scores (baselines.py); None: a run without."""
    source, sites = setup.federation.source, setup.federation.sites
    task, y_test = source.task, source.test.y
    fed_val = predict_validation(setup, federated.strategy, sites)
    reading = Reading(_point(task, rule, fed_val, federated.test_probs, y_test, ALL_SITES), {})
    algorithm = setup.config.federation.algorithm
    if baselines is None:
        reading.verdict = run_verdict(algorithm, task, y_test, federated.test_probs, None, None)
        return reading
    pooled = baselines.pooled
    reading.pooled = _point(task, rule, (pooled.val_probs, pooled.val_labels), pooled.test_probs,
                            y_test, ALL_SITES)
    for site, scores in baselines.local.items():
        val = (scores.val_probs, scores.val_labels)
        reading.local[site] = _point(task, rule, val, scores.test_probs, y_test, OWN_SITE)
        reading.local_val_auc[site] = (float(compute_metrics(task, val[1], val[0])["auc"])
                                       if len(val[1]) else float("nan"))
    reading.verdict = run_verdict(algorithm, task, y_test, federated.test_probs, pooled.test_probs,
                                  {s: (m.test_probs, reading.local_val_auc[s])
                                   for s, m in baselines.local.items()})
    return reading


def _point(task: Task, rule: OperatingRule, val: tuple[np.ndarray, np.ndarray],
           test_probs: np.ndarray, y_test: np.ndarray, chosen_on: str) -> dict[str, Any]:
    """val: (probabilities, labels). Binary tasks score the positive (last) class."""
    if task is not Task.BINARY:
        return not_binary(str(task))
    probs, labels = val
    return operating_point(rule, (labels.astype(int).reshape(-1), probs[:, -1]),
                           (y_test.astype(int).reshape(-1), test_probs[:, -1]), chosen_on)
