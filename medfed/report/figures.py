"""The report's figures: each a function of saved results returning PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from medfed.evaluation import statistics as st  # noqa: E402
from medfed.report.many_sites import SHOWN, is_many

DPI = 100
HEAT_FLOOR = 0.4  # Grad-CAM values below this (of the image's maximum) are left uncoloured


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def intensity_histograms(data: dict[str, dict[str, Any]]) -> bytes:
    """One line per site: the share of its training pixels in each intensity bin. Many sites: the
    band from the lowest to the highest share over sites, their median, and the site whose curve
    lies farthest from the median (the likeliest to have scanned or exported differently)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    shares = {site: _shares(entry["intensity_histogram"]) for site, entry in data.items()}
    bins = len(next(iter(shares.values())))
    centres = (np.arange(bins) + 0.5) / bins
    if is_many(len(shares)):
        _histogram_band(ax, centres, shares)
    else:
        for site, share in shares.items():
            ax.plot(centres, share, marker=".", label=site)
    ax.set_xlabel("pixel intensity (0 = black, 1 = white)")
    ax.set_ylabel("share of pixels")
    ax.set_title("Intensity distribution of each site's training images")
    ax.legend(fontsize=8)
    return _png(fig)


def _shares(counts: list[int]) -> np.ndarray:
    """A site's histogram as shares of its pixels."""
    array = np.asarray(counts, np.float64)
    return array / max(array.sum(), 1)


def _histogram_band(ax: Any, centres: np.ndarray, shares: dict[str, np.ndarray]) -> None:
    """Many sites' histograms as a band, their median and the most unusual site."""
    stacked = np.stack(list(shares.values()))
    median = np.median(stacked, axis=0)
    farthest = list(shares)[int(np.abs(stacked - median).sum(axis=1).argmax())]
    ax.fill_between(centres, stacked.min(axis=0), stacked.max(axis=0), color="tab:blue",
                    alpha=0.2, linewidth=0, label=f"all {len(shares)} sites (lowest to highest)")
    ax.plot(centres, median, marker=".", color="tab:blue", label="median site")
    ax.plot(centres, shares[farthest], marker=".", color="tab:red",
            label=f"{farthest} (farthest from the median)")


def learning_curves(histories: dict[str, list[dict[str, Any]]]) -> bytes:
    """Validation AUC per round (left) and mean training loss (right). One algorithm over up to
    SHOWN sites: a line per site. Several, or more sites: a line per algorithm (the mean over
    sites) in a band from the worst to the best site, since twenty site lines in one panel can no
    longer be told apart."""
    fig, (auc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    colours = model_colours(list(histories))
    site_lines = len(histories) == 1 and not _many_sites(histories)
    for algorithm, rounds in histories.items():
        per_site = _site_auc_series(rounds)
        if site_lines:
            for site, (x, y) in per_site.items():
                auc_ax.plot(x, y, marker="o", label=site)
        elif per_site:
            _mean_band(auc_ax, per_site, colours[algorithm], algorithm)
        losses = [(r["round"], float(np.mean(known))) for r in rounds
                  if (known := [v for v in r.get("train_loss", {}).values() if v is not None])]
        if losses:
            x, y = zip(*losses, strict=True)
            loss_ax.plot(x, y, marker="o", color=colours[algorithm], label=algorithm)
    title = ("Validation AUC at each site" if site_lines
             else "Validation AUC (mean over sites; band: worst to best site)")
    auc_ax.set(xlabel="round", ylabel="validation AUC", title=title)
    loss_ax.set(xlabel="round", ylabel="training loss (mean over sites)", title="Training loss")
    for ax in (auc_ax, loss_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def _many_sites(histories: dict[str, list[dict[str, Any]]]) -> bool:
    return is_many(len({s for rounds in histories.values() for r in rounds for s in r.get("val", {})}))


def _site_auc_series(rounds: list[dict[str, Any]]) -> dict[str, tuple[tuple, tuple]]:
    """site -> (rounds, validation AUCs), for the rounds where the site had an AUC (a site whose
    validation split holds one class has none)."""
    series = {}
    for site in sorted({s for r in rounds for s in r.get("val", {})}):
        points = [(r["round"], r["val"][site]["auc"]) for r in rounds
                  if r.get("val", {}).get(site, {}).get("auc") is not None]
        if points:
            series[site] = tuple(zip(*points, strict=True))
    return series


def _mean_band(ax: Any, per_site: dict[str, tuple[tuple, tuple]], colour: Any, label: str) -> None:
    by_round: dict[int, list[float]] = {}
    for x, y in per_site.values():
        for r, v in zip(x, y, strict=True):
            by_round.setdefault(r, []).append(v)
    rounds = sorted(by_round)
    values = [by_round[r] for r in rounds]
    ax.fill_between(rounds, [min(v) for v in values], [max(v) for v in values], color=colour,
                    alpha=0.15, linewidth=0)
    ax.plot(rounds, [float(np.mean(v)) for v in values], marker="o", markersize=3, color=colour,
            label=label)


def model_colours(names: list[str]) -> dict[str, Any]:
    """One colour per model, the same in every figure: federated models take the qualitative
    palette in order, pooled is black, local-only models are shades of grey (drawn dashed)."""
    palette = plt.get_cmap("tab10").colors
    local = [n for n in names if n.startswith("local:")]
    colours: dict[str, Any] = {}
    federated = 0
    for name in names:
        if name == "pooled":
            colours[name] = "black"
        elif name.startswith("local:"):
            colours[name] = str(0.35 + 0.4 * local.index(name) / max(1, len(local) - 1))
        else:
            colours[name] = palette[federated % len(palette)]
            federated += 1
    return colours


def _line_styles(names: list[str]) -> dict[str, dict[str, Any]]:
    """matplotlib keywords per model: its colour; local-only models thin and dashed."""
    colours = model_colours(names)
    return {name: {"color": colours[name], "linestyle": "--" if name.startswith("local:") else "-",
                   "linewidth": 1.0 if name.startswith("local:") else 2.0} for name in names}


def roc_curves(labels: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    """ROC curve of each model on the same test images, AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    styles = _line_styles(list(scores))
    for name, score in scores.items():
        fpr, tpr, _ = roc_curve(labels, score)
        ax.plot(fpr, tpr, **styles[name], label=f"{name} (AUC {st.auc(labels, score):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           title="ROC curves on the held-out test set", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def reliability_curves(labels: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    """Observed rate of disease against the predicted probability, ECE in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    styles = _line_styles(list(scores))
    for name, score in scores.items():
        curve = st.reliability(labels, score)
        keep = curve.counts > 0
        ax.plot(curve.mean_predicted[keep], curve.observed_rate[keep], **styles[name], marker="o",
                label=f"{name} (ECE {curve.ece:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(xlabel="predicted probability of disease", ylabel="observed share with disease",
           title="Calibration (reliability curves)", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def cross_site_heatmap(sites: list[str], matrix: list[list[float | None]]) -> bytes:
    """AUC of each site's local model (rows) at each site (columns), values written in the cells."""
    values = np.array([[math.nan if v is None else v for v in row] for row in matrix], np.float64)
    size = 1.0 + 0.9 * len(sites)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis")
    for i in range(len(sites)):
        for j in range(len(sites)):
            text = "n/a" if math.isnan(values[i, j]) else f"{values[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if math.isnan(values[i, j]) or values[i, j] < 0.8 else "black")
    ax.set_xticks(range(len(sites)), sites, rotation=30, ha="right")
    ax.set_yticks(range(len(sites)), sites)
    ax.set(xlabel="evaluated at site", ylabel="model trained only at site",
           title="Cross-site AUC of local models")
    fig.colorbar(image, ax=ax, label="AUC")
    return _png(fig)


def per_round_traffic(histories: dict[str, list[dict[str, Any]]]) -> bytes:
    """Bytes sent to and received from the sites per round (left), seconds per round (right)."""
    fig, (bytes_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 3.4))
    for algorithm, rounds in histories.items():
        x = [r["round"] for r in rounds]
        bytes_ax.plot(x, [r["bytes_down"] / 1e6 for r in rounds], marker="o",
                      label=f"{algorithm}: server to sites")
        bytes_ax.plot(x, [r["bytes_up"] / 1e6 for r in rounds], marker="s", linestyle="--",
                      label=f"{algorithm}: sites to server")
        time_ax.plot(x, [r["seconds"] for r in rounds], marker="o", label=algorithm)
    bytes_ax.set(xlabel="round", ylabel="megabytes", title="Data sent per round (all sites)")
    time_ax.set(xlabel="round", ylabel="seconds", title="Wall time per round")
    for ax in (bytes_ax, time_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    return _png(fig)


def gradcam_grid(panels: dict[str, np.ndarray], class_names: list[str]) -> bytes:
    """Per site a row: each image beside its Grad-CAM overlay (red = what drove the prediction)."""
    rows = grid_rows(panels)
    cols = max(len(r) for _, r in rows)
    fig, axes = plt.subplots(len(rows), 2 * cols, figsize=(2 * cols * 1.6, len(rows) * 1.9),
                             squeeze=False)
    for row, (group, index) in enumerate(rows):
        for col in range(2 * cols):
            axes[row, col].axis("off")
        for k, i in enumerate(index):
            image, heat = panels["images"][i], panels["maps"][i]
            label = _label_text(panels["labels"][i], class_names)
            axes[row, 2 * k].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[row, 2 * k].set_title(f"{group}\ntruth: {label}", fontsize=7)
            axes[row, 2 * k + 1].imshow(image, cmap="gray", vmin=0, vmax=1)
            # only the regions that mattered are coloured; the rest of the image stays readable
            axes[row, 2 * k + 1].imshow(np.ma.masked_less(heat, HEAT_FLOOR), cmap="jet", alpha=0.5,
                                        vmin=0, vmax=1)
            axes[row, 2 * k + 1].set_title(f"model: p = {float(panels['probs'][i]):.2f}", fontsize=7)
    return _png(fig)


def grid_rows(panels: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(site, the indices of its panels) of the first SHOWN sites that have panels: a row per site
    of 100 sites took longer to draw than the sites took to train."""
    groups = [str(g) for g in panels["groups"]]
    rows = [(g, np.flatnonzero(panels["group"] == k)) for k, g in enumerate(groups)]
    return [(g, r) for g, r in rows if len(r)][:SHOWN]


def _label_text(label: Any, class_names: list[str]) -> str:
    arr = np.asarray(label)
    if arr.ndim == 0:
        k = int(arr)
        return class_names[k] if k < len(class_names) else str(k)
    found = [class_names[j] if j < len(class_names) else str(j) for j in np.flatnonzero(arr)]
    return ", ".join(found) or "no finding"
