"""`medfed compare`'s figures over seeds: every configuration's metrics as mean, sd and ci95
(the t-interval over seeds, or with one seed the bootstrap interval over test images; for
"site_mean" the t-interval over sites), and the paired tests of each federated model against the
pooled model and the best single site (chosen by its own validation AUC, not by the test set).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from medfed.compare_results import Scored, SeedResult
from medfed.evaluation import statistics as st
from medfed.evaluation.metrics import METRIC_KEYS
from medfed.evaluation.verdict import best_by_validation
from medfed.experiment import POOLED
from medfed.pooled_record import over_seeds

if TYPE_CHECKING:
    from medfed.compare import CompareOptions

LOCAL = "local:"  # the prefix of the local-only models' names ("local:<site>")
SUMMARY_KEYS = (*METRIC_KEYS, "loss")


def summarize(per_seed: list[dict[str, Scored]], options: CompareOptions) -> dict[str, Any]:
    """compare.json's "configurations": every configuration's metrics over seeds."""
    out = {}
    for name in per_seed[0]:
        runs = [seed[name] for seed in per_seed]
        entry = {"test": {k: _over_seeds([r.test.get(k, math.nan) for r in runs],
                                         runs[0].extra.get("ci95", {}).get(k), bounded=k != "loss")
                          for k in SUMMARY_KEYS}}
        if runs[0].site_test:
            entry |= _site_summary(runs)
        entry |= _binary_summary(runs)
        if "execution" in runs[0].extra:  # the pooled model: how it was trained
            entry |= over_seeds([r.extra["execution"] for r in runs])
        entry["per_seed"] = [_seed_record(r) for r in runs]
        out[name] = entry
    return out


def _site_summary(runs: list[Scored]) -> dict[str, Any]:
    means = {k: [float(np.nanmean([m.get(k, math.nan) for m in r.site_test.values()])) for r in runs]
             for k in METRIC_KEYS}  # sites score metrics, not the loss
    one_seed = len(runs) == 1
    site_mean = {k: _over_seeds(v, _t_interval([m.get(k, math.nan) for m in runs[0].site_test.values()],
                                               k != "loss") if one_seed else None, bounded=k != "loss")
                 for k, v in means.items()}
    aucs = [[m.get("auc", math.nan) for m in r.site_test.values()] for r in runs]
    return {"site_mean": site_mean,
            "worst_site_auc": _over_seeds([float(np.nanmin(a)) for a in aucs]),
            "site_gap_auc": _over_seeds([float(np.nanmax(a) - np.nanmin(a)) for a in aucs])}


def _binary_summary(runs: list[Scored]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "ece" in runs[0].extra:
        out["ece"] = _over_seeds([r.extra["ece"] for r in runs])
    if all("operating_point" in r.extra for r in runs):
        out["operating_point"] = {k: _over_seeds([r.extra["operating_point"][k] for r in runs])
                                  for k in ("threshold", "sensitivity", "specificity")}
    return out


def _seed_record(run: Scored) -> dict[str, Any]:
    record: dict[str, Any] = {"test": run.test, "validation_auc": run.val_auc}
    if run.site_test:
        record["sites"] = run.site_test
    return record | {k: v for k, v in run.extra.items()}


def _over_seeds(values: list[float], single: list[float] | None = None, bounded: bool = True
                ) -> dict[str, Any]:
    """mean, sd and ci95 of one metric over seeds; bounded metrics (in [0, 1]) keep their CI there."""
    arr = np.asarray(values, dtype=np.float64)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    interval = _t_interval(values, bounded) if len(arr) > 1 else single
    return {"mean": float(arr.mean()), "sd": sd, "ci95": interval}


def _t_interval(values: list[float], bounded: bool = True) -> list[float] | None:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(arr) < 2:
        return None
    half = float(stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    low, high = float(arr.mean() - half), float(arr.mean() + half)
    return [max(low, 0.0), min(high, 1.0)] if bounded else [low, high]


def paired_tests(results: list[SeedResult], algorithms: tuple[str, ...]) -> dict[str, Any]:
    """Each federated model against the pooled model and the best single site (by validation)."""
    out = {}
    for algorithm in algorithms:
        for label, pick in (("pooled", lambda seed: POOLED), ("best_local", _best_local)):
            delong, a_auc, b_auc = [], [], []
            for result in results:
                seed = result.scored
                a, b = seed[algorithm], seed[pick(seed)]
                test = st.delong_test(result.test_labels, a.test_probs[:, -1], b.test_probs[:, -1])
                delong.append({"against": b.name, **vars(test)})
                a_auc.append(a.test["auc"])
                b_auc.append(b.test["auc"])
            entry: dict[str, Any] = {"delong": delong}
            if len(results) > 1:
                entry["t_test"] = vars(st.paired_t_test(np.array(a_auc), np.array(b_auc)))
            out[f"{algorithm} vs {label}"] = entry
    return out


def _best_local(seed: dict[str, Scored]) -> str:
    best = best_by_validation({s.name: s.val_auc for s in seed.values() if s.name.startswith(LOCAL)})
    if best is None:
        raise ValueError("no local-only model to compare with")
    return best
