"""The report's figures: readable with many models (one colour per model everywhere, a band per
algorithm rather than a line per algorithm and site)."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np

from medfed.report import figures


def rounds(values: dict[str, list[float | None]]) -> list[dict]:
    """A history: round r has site s's validation AUC values[s][r] (None: no AUC that round)."""
    n = len(next(iter(values.values())))
    return [{"round": r, "train_loss": {s: 0.5 / (r + 1) for s in values},
             "val": {s: {"auc": v[r]} for s, v in values.items()}} for r in range(n)]


def decode(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")


def test_each_model_keeps_one_distinct_colour_pooled_black_locals_grey():
    names = [f"alg{k}" for k in range(10)] + ["local:a", "local:b", "pooled"]
    colours = figures.model_colours(names)
    federated = [tuple(colours[f"alg{k}"]) for k in range(10)]
    assert len(set(federated)) == 10
    assert colours["pooled"] == "black"
    assert colours["local:a"] != colours["local:b"]
    assert all(0 <= float(colours[n]) <= 1 for n in ("local:a", "local:b"))  # grey levels


def test_learning_curves_draw_for_one_or_many_algorithms_and_skip_sites_without_auc():
    one = {"fedavg": rounds({"site-a": [0.6, 0.7, 0.8], "site-b": [None, None, None]})}
    many = {name: rounds({"site-a": [0.6, 0.7, 0.8], "site-b": [0.5, 0.9, None]})
            for name in ("fedavg", "fedprox", "fedbn", "cwt", "ensemble")}
    for histories in (one, many):
        image = decode(figures.learning_curves(histories))
        assert image.shape[0] > 100 and image.std() > 0  # drawn, not blank


def test_the_band_spans_the_worst_to_the_best_site():
    captured = {}

    class Axis:
        def fill_between(self, x, low, high, **_):
            captured["band"] = (list(x), list(low), list(high))

        def plot(self, x, y, **_):
            captured["mean"] = list(y)

    per_site = {"a": ((0, 1), (0.6, 0.8)), "b": ((0, 1), (0.8, 0.9)), "c": ((1,), (0.7,))}
    figures._mean_band(Axis(), per_site, "red", "fedavg")
    assert captured["band"] == ([0, 1], [0.6, 0.7], [0.8, 0.9])
    assert np.allclose(captured["mean"], [0.7, 0.8])
