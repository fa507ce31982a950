"""What `medfed run` and `medfed compare` save for the report, beside their metrics.

- the data summary of each site, computed at the site from its own training images: sizes,
  label counts and a 32-bin intensity histogram of the images in [0, 1] (aggregates only);
- predictions.npz: the held-out test labels and each configuration's probabilities (no images),
  from which the report draws ROC and reliability curves and runs DeLong's test;
- gradcam.npz: a few test images per site with the final model's Grad-CAM heat map (MONAI's
  GradCAM), computed where the images are; for the first many_sites.SHOWN sites only (the report
  draws no more).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfed.data.dataset import Samples, label_counts
from medfed.report.grad_cam import grad_cam
from medfed.report.many_sites import SHOWN
from medfed.types import Prediction, SiteId, StateDict, Task

HIST_BINS = 32
BATCH = 256
GRADCAM_PER_CLASS = 2  # positives and negatives per site (binary); images per site otherwise: 4


def intensity_histogram(samples: Samples, preprocess: Any) -> list[int] | None:
    """Counts of the preprocessed pixel intensities in HIST_BINS equal bins of [0, 1];
    None for tabular data (no intensities)."""
    if samples.x.ndim < 3 or len(samples) == 0:
        return None
    counts = np.zeros(HIST_BINS, np.int64)
    for start in range(0, len(samples), BATCH):
        x = preprocess(samples.x[start:start + BATCH]).numpy()
        counts += np.histogram(np.clip(x, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))[0]
    return counts.tolist()


def data_summary(setup: Any) -> dict[SiteId, dict[str, Any]]:
    """Per site: n_train, n_val, n_test, training label counts and intensity histogram."""
    source = setup.federation.source
    out = {}
    for site, data in setup.federation.sites.items():
        entry: dict[str, Any] = {
            "n_train": len(data.train), "n_val": len(data.val),
            "n_test": len(data.test) if data.test is not None else 0,
            "label_counts": label_counts(source.task, data.train.y, source.num_outputs)}
        hist = intensity_histogram(data.train, setup.preprocess)
        if hist is not None:
            entry["intensity_histogram"] = hist
        out[site] = entry
    return out


def write_predictions(path: Path, labels: np.ndarray, probs: dict[str, np.ndarray]) -> None:
    """labels (N,) or (N, L); names (K,); probs (K, N, C) float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(probs)
    np.savez_compressed(path, labels=np.asarray(labels), names=np.array(names, dtype=str),
                        probs=np.stack([np.asarray(probs[n], np.float32) for n in names]))


def read_predictions(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with np.load(path) as f:
        return f["labels"], {str(n): f["probs"][k] for k, n in enumerate(f["names"])}


# --- Grad-CAM --------------------------------------------------------------------------------

def target_layer(model: nn.Module) -> str | None:
    """The layer Grad-CAM looks at: the default cnn's last convolution block (conv, norm, ReLU),
    else the last convolution layer of the network; None when it has none (tabular models)."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        from medfed.models.cnn import ConvBlock

        blocks = [k for k, m in features.named_children() if isinstance(m, ConvBlock)]
        if blocks:
            return f"features.{blocks[-1]}"
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return convs[-1] if convs else None


def _pick(y: np.ndarray, task: Task, rng: np.random.Generator) -> np.ndarray:
    """GRADCAM_PER_CLASS positives and negatives (binary), else the first four images."""
    if task is Task.BINARY:
        picked = [rng.permutation(np.flatnonzero(y == c))[:GRADCAM_PER_CLASS] for c in (1, 0)]
        return np.concatenate(picked).astype(np.int64)
    return np.arange(min(2 * GRADCAM_PER_CLASS, len(y)))


def gradcam_panels(setup: Any, strategy: Any) -> dict[str, Any]:
    """Heat maps of the final model for a few test images per site (the site's own test split
    when sites are natural, of the first SHOWN sites; else the global test set under the name
    "test set").

    Returns {"skipped": reason} when it cannot be drawn, else arrays for gradcam.npz: images and
    maps (K, H, W) in [0, 1] (3D: the middle slice), labels, probabilities, group names."""
    source = setup.federation.source
    if source.spatial_dims == 0:
        return {"skipped": "tabular data has no image to explain"}
    if strategy.prediction is Prediction.ENSEMBLE:
        return {"skipped": "the ensemble has no single model whose attention could be shown"}
    model = setup.predictor.model
    layer = target_layer(model)
    if layer is None:
        return {"skipped": f"model {setup.config.model.model} has no convolution layer"}
    groups = _groups(setup)
    rng = np.random.default_rng([setup.config.seed, 11])
    images, maps, labels, probs, group_index = [], [], [], [], []
    for k, (site, samples) in enumerate(groups.items()):
        index = _pick(samples.y, source.task, rng)
        if len(index) == 0:
            continue
        state: StateDict = (strategy.site_state(site) if strategy.prediction is Prediction.SITE
                            and site in strategy.trained_sites else strategy.global_state)
        model.load_state_dict(state)
        model.eval()
        x = setup.preprocess(samples.x[index]).to(setup.predictor.device)
        with torch.no_grad():
            logits = model(x)
        p = (torch.sigmoid(logits) if source.task is Task.MULTILABEL else logits.softmax(1))
        class_idx = source.num_outputs - 1 if source.task is Task.BINARY else None
        heat = grad_cam(model, layer, x, class_idx)
        image = x.detach().cpu().numpy().mean(axis=1)  # channels averaged for display
        if image.ndim == 4:  # 3D: the middle axial slice
            middle = image.shape[1] // 2
            image, heat = image[:, middle], heat[:, middle]
        images.append(image)
        maps.append(np.nan_to_num(heat))
        labels.append(samples.y[index])
        probs.append(p.detach().cpu().numpy()[:, -1] if source.task is Task.BINARY
                     else p.detach().cpu().numpy().max(1))
        group_index.append(np.full(len(index), k))
    if not images:
        return {"skipped": "no test image to explain"}
    return {"images": np.concatenate(images).astype(np.float32),
            "maps": np.concatenate(maps).astype(np.float32),
            "labels": np.concatenate(labels), "probs": np.concatenate(probs).astype(np.float32),
            "group": np.concatenate(group_index), "groups": np.array(list(groups), dtype=str),
            "layer": np.array(layer)}


def _groups(setup: Any) -> dict[str, Samples]:
    """The first SHOWN sites' own test splits, or the global test set."""
    sites = setup.federation.sites
    if all(d.test is not None and len(d.test) for d in sites.values()):
        return {site: d.test for site, d in list(sites.items())[:SHOWN]}
    return {"test set": setup.federation.source.test}


def write_gradcam(path: Path, panels: dict[str, Any]) -> str | None:
    """gradcam.npz, or the reason there is none (returned, for the report)."""
    if "skipped" in panels:
        return str(panels["skipped"])
    np.savez_compressed(path, **panels)
    return None
