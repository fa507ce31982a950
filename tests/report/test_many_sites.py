"""Many sites: the report and the console show up to SHOWN sites one by one, as always; beyond
that, capped tables that say how many more there are and where, bands rather than a line per
site, the first SHOWN sites' Grad-CAM rows, the best and the worst local-only models."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np

from medfed.report import figures
from medfed.report.html import Section
from medfed.report.many_sites import (
    SHOWN,
    capped,
    hidden_local_note,
    name_list,
    shown_models,
    verdict_local,
)
from medfed.report.run_sections import _per_site


def site_names(n: int) -> list[str]:
    return [f"site-{k:03d}" for k in range(n)]


def test_up_to_shown_sites_nothing_is_capped():
    rows = [[s, "1"] for s in site_names(SHOWN)]
    assert capped(rows, "summary.json") == rows
    assert name_list(site_names(3)) == "site-000, site-001, site-002"
    aucs = {"federated": 0.8, "pooled": 0.9} | {f"local:{s}": 0.7 for s in site_names(SHOWN)}
    assert shown_models(aucs) == list(aucs) and hidden_local_note(aucs, list(aucs)) == ""


def test_beyond_shown_a_table_says_how_many_more_and_where():
    rows = [[s, "1"] for s in site_names(30)]
    out = capped(rows, "summary.json")
    assert out[:SHOWN] == rows[:SHOWN] and len(out) == SHOWN + 1
    assert out[-1] == [f"... and {30 - SHOWN} more (every one in summary.json)", ""]
    assert name_list(site_names(30)).endswith(f"site-{SHOWN - 1:03d} and {30 - SHOWN} more")


def test_of_many_local_models_the_best_the_worst_and_the_verdicts_are_shown_the_rest_summarised():
    aucs = {"federated": 0.8, "pooled": 0.9} | {f"local:{s}": 0.5 + k / 100
                                                for k, s in enumerate(site_names(30))}
    aucs["local:site-007"] = None  # a model with no AUC is never picked as best or worst
    shown = shown_models(aucs)
    assert shown == ["federated", "pooled", "local:site-000", "local:site-029"]
    note = hidden_local_note(aucs, shown)
    assert note.startswith("Of the 30 local-only models 2 are shown (the best and the worst on the "
                           "test set); the other 28 (test AUC median")
    assert "summary.json's baselines.local" in note
    keep = ["local:site-011"]  # the single site the verdict compares with, chosen on validation
    assert shown_models(aucs, keep) == ["federated", "pooled", "local:site-000", "local:site-011",
                                        "local:site-029"]
    assert "and the single site the verdict" in hidden_local_note(aucs, shown_models(aucs, keep),
                                                                   keep)


def test_the_per_site_table_lists_the_worst_sites_first():
    sites = {s: {"val": {"auc": 0.5 + k / 100}} for k, s in enumerate(site_names(30))}
    sites["site-020"] = {"val": {"auc": 0.1}}
    section = Section("Results")
    _per_site(section, sites)
    html = "".join(section.parts)
    assert html.count("<tr>") == 1 + SHOWN + 1  # header, the shown sites, "... and 18 more"
    assert html.index("site-020") < html.index("site-000") and "site-029" not in html
    assert "Worst site AUC 0.100" in html


def panels(groups: int) -> dict[str, np.ndarray]:
    """A Grad-CAM panel set of one 8x8 image per site."""
    rng = np.random.default_rng(0)
    return {"images": rng.random((groups, 8, 8), np.float32),
            "maps": rng.random((groups, 8, 8), np.float32), "labels": np.zeros(groups, np.int64),
            "probs": np.full(groups, 0.5, np.float32), "group": np.arange(groups),
            "groups": np.array(site_names(groups)), "layer": np.array("features.6")}


def height(png: bytes) -> int:
    return mpimg.imread(io.BytesIO(png), format="png").shape[0]


def test_the_grad_cam_grid_draws_the_first_shown_sites():
    rows = figures.grid_rows(panels(SHOWN + 8))
    assert [site for site, _ in rows] == site_names(SHOWN)


def test_many_sites_histograms_and_curves_draw_a_band():
    data = {s: {"intensity_histogram": list(np.random.default_rng(k).integers(0, 9, 32))}
            for k, s in enumerate(site_names(30))}
    assert height(figures.intensity_histograms(data)) > 100
    history = [{"round": r, "train_loss": {s: 0.5 for s in data},
                "val": {s: {"auc": 0.6 + r / 10} for s in data}} for r in (1, 2)]
    assert height(figures.learning_curves({"fedavg": history})) > 100


def test_the_verdicts_single_site_is_kept_when_the_verdict_names_one():
    assert verdict_local({"verdict": {"vs_best_single_site": {"site": "site-011"}}}) == [
        "local:site-011"]
    assert verdict_local({"verdict": {"vs_best_single_site": None}}) == []  # no baselines
    assert verdict_local({}) == []
