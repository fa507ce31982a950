"""One seed of `medfed compare`, scored, and kept on disk as soon as it is done: an interrupted
compare resumes (`medfed compare --resume DIR`) with the seeds that finished, and Ctrl-C leaves
them readable. A seed is stored as DIR/seeds/seed<k>.json (metrics, histories, data summary) and
seed<k>.npz (test labels, every configuration's test probabilities, Grad-CAM panels): no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfed.output import finite, round_record
from medfed.run_state import round_result
from medfed.types import Metrics, SiteId


@dataclass
class Scored:
    """One configuration of one seed, scored."""

    name: str
    test: Metrics
    test_probs: np.ndarray  # kept in memory for the paired tests; never written
    site_test: dict[SiteId, Metrics] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # calibration, operating point, CIs
    val_auc: float = float("nan")


@dataclass
class SeedResult:
    scored: dict[str, Scored]
    cross_site: list[list[float]] | None
    test_labels: np.ndarray  # the test set of this seed (synthetic data differs by seed)
    histories: dict[str, list[Any]] = field(default_factory=dict)  # algorithm -> RoundResults
    data: dict[str, Any] = field(default_factory=dict)  # data summary per site (the report's)
    gradcam: dict[str, Any] | None = None  # the first algorithm's Grad-CAM panels (first seed)
    about: dict[str, Any] = field(default_factory=dict)  # dataset, task, sites ... (the header)


def save_seed(folder: Path, seed: int, result: SeedResult) -> None:
    """The seed's record, written atomically (a half-written seed is never read back)."""
    seeds = folder / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    arrays = {"test_labels": result.test_labels}
    arrays |= {f"probs/{name}": s.test_probs for name, s in result.scored.items()}
    arrays |= {f"gradcam/{k}": np.asarray(v) for k, v in (result.gradcam or {}).items()}
    record = {
        "scored": {name: {"test": s.test, "site_test": s.site_test, "extra": s.extra,
                          "val_auc": s.val_auc} for name, s in result.scored.items()},
        "cross_site": result.cross_site, "data": result.data, "about": result.about,
        "histories": {a: [round_record(r) for r in h] for a, h in result.histories.items()},
        "gradcam": result.gradcam is not None,
    }
    np.savez(seeds / f"seed{seed}.tmp.npz", **arrays)
    (seeds / f"seed{seed}.tmp.json").write_text(json.dumps(finite(record), default=_plain))
    (seeds / f"seed{seed}.tmp.npz").replace(seeds / f"seed{seed}.npz")
    (seeds / f"seed{seed}.tmp.json").replace(seeds / f"seed{seed}.json")  # last: marks it complete


def load_seed(folder: Path, seed: int) -> SeedResult | None:
    """A finished seed's result, or None when it has not finished."""
    path = folder / "seeds" / f"seed{seed}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    with np.load(folder / "seeds" / f"seed{seed}.npz", allow_pickle=False) as arrays:
        probs = {k[len("probs/"):]: arrays[k] for k in arrays.files if k.startswith("probs/")}
        gradcam = ({k[len("gradcam/"):]: arrays[k] for k in arrays.files
                    if k.startswith("gradcam/")} if record["gradcam"] else None)
        labels = arrays["test_labels"]
    scored = {name: Scored(name, s["test"], probs[name], s["site_test"], s["extra"],
                           float("nan") if s["val_auc"] is None else s["val_auc"])
              for name, s in record["scored"].items()}
    histories = {a: [round_result(r) for r in h] for a, h in record["histories"].items()}
    return SeedResult(scored, record["cross_site"], labels, histories, record["data"], gradcam,
                      record["about"])


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")
