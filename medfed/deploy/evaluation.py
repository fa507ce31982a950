"""Federated evaluation at the coordinator: the final model scored by every site on its own
splits, combined from what the sites send (aggregates only; medfed/evaluation/federated.py).

Each site answers the "final" task with score summaries (per-class score histograms and its
confusion counts) of its validation and test splits, its own exact test metrics with a DeLong CI,
and, with baselines, its local-only model's metrics and the paired DeLong comparison. From these
the coordinator computes:

- the pooled test metrics and the pooled AUC with a 95 % CI, as if every site's test patients
  were scored in one place (exact for the threshold metrics; the AUC up to the histogram's bins),
- an operating point chosen on the pooled validation scores (Youden; evaluation/operating_point.py
  holds the rule `medfed run` and `medfed compare` apply too), and the pooled test sensitivity and
  specificity at it,
- each site's own test metrics, and their mean over sites (the figure FLamby publishes).

Everything a site sends is checked first: a malformed answer is that site's failure, recorded,
never the coordinator's crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfed.errors import IncompatibleUpdate, TransportError
from medfed.evaluation.federated import (
    ScoreSummary,
    auc_interval,
    auc_tie_bound,
    combine,
    parse_summary,
    summary_metrics,
)
from medfed.evaluation.metrics import METRIC_KEYS
from medfed.evaluation.operating_point import POOLED_SUMMARIES, summary_operating_point
from medfed.evaluation.operating_rule import OperatingRule
from medfed.task_schema import TaskSchema
from medfed.types import SiteId, Task

METHOD = ("pooled from per-site score histograms (no per-image score leaves a site); threshold "
          "metrics exact, AUC up to ties within a histogram bin; DeLong CI on the binned scores")


@dataclass(frozen=True)
class SiteAnswer:
    val: ScoreSummary
    test: ScoreSummary
    metrics: dict[str, dict[str, Any]]  # "val" and "test": the site's exact metrics
    local: dict[str, Any] | None  # with baselines: "test" metrics and the "paired" comparison


def parse_answer(raw: Any, schema: TaskSchema) -> SiteAnswer:
    """A site's answer to "final", checked; IncompatibleUpdate names what is wrong."""
    if not isinstance(raw, dict):
        raise IncompatibleUpdate("the final evaluation is not a JSON object")
    if "withheld" in raw:
        raise IncompatibleUpdate(f"withheld: {str(raw['withheld'])[:200]}")
    outputs = len(schema.classes)
    summaries = [parse_summary(raw.get(split), schema.kind, outputs) for split in ("val", "test")]
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict):
        raise IncompatibleUpdate("the final evaluation has no metrics")
    local = raw.get("local")
    return SiteAnswer(summaries[0], summaries[1],
                      {split: clean_metrics(metrics.get(split)) for split in ("val", "test")},
                      _clean_local(local) if local is not None else None)


def combine_answers(answers: dict[SiteId, SiteAnswer], failed: dict[SiteId, str],
                    schema: TaskSchema) -> dict[str, Any]:
    """summary.json's test, sites' test metrics, site_mean, operating_point and baselines."""
    if not answers:  # recorded, not a crash: the trained model is still written
        return {"test": {}, "n_test": 0, "site_test": {}, "site_val": {},
                "evaluation": {"method": METHOD, "sites": [], "failed": failed}}
    test_pool = combine([a.test for a in answers.values()])
    val_pool = combine([a.val for a in answers.values()])
    test = summary_metrics(test_pool)
    out: dict[str, Any] = {"test": test, "n_test": test_pool.n,
                           "evaluation": {"method": METHOD, "sites": sorted(answers),
                                          "failed": failed}}
    if schema.kind is Task.BINARY:
        interval = auc_interval(test_pool)
        test["auc_ci"] = [interval.low, interval.high]
        # How far the binned AUC can be from the raw pooled scores' AUC (ties within a bin).
        out["evaluation"]["auc_error_bound"] = auc_tie_bound(test_pool)
    # Youden's J on the pooled validation histograms (operating_point.py), for binary tasks; other
    # tasks get the record saying why there is no single threshold.
    out["operating_point"] = summary_operating_point(OperatingRule(), val_pool, test_pool,
                                                     POOLED_SUMMARIES)
    out["site_test"] = {s: a.metrics["test"] for s, a in answers.items()}
    out["site_val"] = {s: a.metrics["val"] for s, a in answers.items()}
    out["site_mean"] = {k: float(np.mean(v)) for k in (*METRIC_KEYS, "loss")
                        if (v := [a.metrics["test"][k] for a in answers.values()
                                  if math.isfinite(a.metrics["test"].get(k, math.nan))])}
    local = {s: a.local for s, a in answers.items() if a.local is not None}
    if local:
        out["baselines"] = {"local": local}
    return out


def clean_metrics(raw: Any) -> dict[str, Any]:
    """Numbers by name (and an AUC interval), from a site: anything else is refused."""
    if not isinstance(raw, dict) or len(raw) > 64:
        raise IncompatibleUpdate("metrics must be a JSON object of at most 64 numbers")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or len(key) > 64:
            raise IncompatibleUpdate("a metric's name must be a short string")
        if key == "auc_ci":
            out[key] = _pair(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            raise IncompatibleUpdate(f"metric {key} is not a number")
    return out


def _clean_local(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("paired"), dict):
        raise IncompatibleUpdate("the local baseline's answer lacks its paired comparison")
    paired = raw["paired"]
    clean: dict[str, Any] = {"method": str(paired.get("method", "none"))[:32]}
    if clean["method"] == "DeLong":
        for key in ("difference", "low", "high", "p_value"):
            value = paired.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise IncompatibleUpdate(f"the paired comparison's {key} is not a number")
            clean[key] = float(value)
    else:
        clean["reason"] = str(paired.get("reason", ""))[:300]
    return {"test": clean_metrics(raw.get("test")), "paired": clean}


def _pair(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise IncompatibleUpdate("auc_ci must be two numbers")
    return [float(value[0]), float(value[1])]


def gather(transport: Any, states: dict[SiteId, Any], schema: TaskSchema, baselines: bool,
           seconds: float) -> tuple[dict[SiteId, SiteAnswer], dict[SiteId, str]]:
    """Send "final" to every site, parse what comes back; failures by site, with the reason."""
    answers, failed = {}, {}
    for site, raw in transport.ask_all("final", states, {"baselines": baselines}, seconds).items():
        try:
            if isinstance(raw, TransportError):
                raise raw
            answers[site] = parse_answer(raw, schema)
        except (TransportError, IncompatibleUpdate) as exc:
            failed[site] = str(exc)[:300]
    return answers, failed
