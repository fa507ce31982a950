"""summary.json's common part: the one builder `medfed run` (simulation) and `medfed server`
(deployment) share, so both write the keys DESIGN.md promises with the same meaning. Each mode
then adds what only it knows (simulation: baselines with pooled training, data notes; deployment:
how the sites' aggregates were combined, the site mean).

Both modes write what a clinician reads first, with the same meaning:
- `verdict` (evaluation/verdict.py): did federation beat the best single site, how far is it
  from pooling; its `text` is the line that opens the console and the report;
- `operating_point` (evaluation/operating_point.py): the threshold chosen on validation data and
  the test sensitivity and specificity at it, beside `test`'s figures at 0.5."""

from __future__ import annotations

from typing import Any

import medfed
from medfed.config import RunConfig
from medfed.types import Metrics, SiteId


def run_summary(config: RunConfig, *, mode: str, dataset: str, task: str, class_names: list[str],
                partition: str, sites: dict[SiteId, dict[str, Any]], test: Metrics, n_test: int,
                device: str, wall_seconds: float, bytes_up: int, bytes_down: int,
                failed_updates: dict[int, dict[str, str]], attackers: list[SiteId],
                verdict: dict[str, Any], operating_point: dict[str, Any],
                defaults: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    fed = config.federation
    return {
        "verdict": verdict, "medfed_version": medfed.__version__, "mode": mode, "dataset": dataset,
        "task": task,
        "class_names": list(class_names), "partition": partition, "algorithm": fed.algorithm,
        "aggregator": fed.aggregator,
        "attack": {"kind": config.adversary.attack, "sites": attackers},
        "model": config.model.model, "norm": config.model.norm, "rounds": fed.rounds,
        "local_epochs": config.training.local_epochs, "seed": config.seed, "device": device,
        "sites": sites, "test": test, "operating_point": operating_point, "n_test": n_test,
        "wall_seconds": wall_seconds,
        "bytes_up": bytes_up, "bytes_down": bytes_down, "failed_updates": failed_updates,
        "defaults": defaults or {},  # settings chosen from the data: {key: {value, why}}
    }
