"""The model bundle: what a clinic needs to use a trained model, in one folder `model/`.

- `model.safetensors`: the weights. One model under its own keys; a personalized strategy (FedBN,
  ensemble) keeps one model per site, under `member<k>.<key>`, and the bundle predicts with the mean
  of their probabilities (a patient of a new clinic belongs to no training site).
- `model.json`: the task schema, the network (name, norm, width), the exact preprocessing (each
  input format's reader, the intensity scale, the resize, the harmonization and its reference), the
  operating point chosen on validation, and provenance (configuration hash, medfed version, the
  data counts, the audit head for a deployment).

Every `medfed run` and every deployed federation writes one (simulation_bundle / deployment_bundle);
`medfed predict` and `medfed export` read it back with load_bundle, so the weights are never used
with preprocessing other than their training's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medfed
from medfed.errors import ConfigError
from medfed.evaluation.operating_rule import OperatingRule
from medfed.models import ModelSpec, build_model
from medfed.task_schema import TaskSchema
from medfed.transport.codec import decode_state, encode_state
from medfed.types import StateDict, Task

FOLDER = "model"
FORMAT = "medfed-bundle/1"
READERS = {  # how each input format becomes intensities in [0, 1]: the loaders' own rules
    "dicom": "modality LUT, then the VOI LUT (window centre/width or LUT sequence) mapped to [0, 1]; "
             "MONOCHROME1 inverted; without a window, the image's own min-max (data/dicom.py)",
    "nifti": "clipped to the volume's own 0.5th-99.5th percentiles, scaled to [0, 1], (z, y, x) "
             "(data/nifti.py)",
    "png/jpeg": "8-bit / 255; 16-bit greyscale its own min-max; colour as RGB (data/images.py)",
    "npz": "MedMNIST test split: / 255 for uint8, else / its maximum (data/medmnist.py)",
}


@dataclass(frozen=True)
class Bundle:
    """A bundle read back: enough to rebuild the model and its input pipeline."""

    folder: Path
    schema: TaskSchema
    model: str
    norm: str
    width: int
    members: list[StateDict]
    harmonize_reference: np.ndarray | None
    threshold: float | None  # binary tasks: positive if p(last class) >= threshold
    info: dict[str, Any]

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.schema.spatial_dims, self.schema.channels, len(self.schema.classes),
                         self.norm, input_size=self.schema.spatial_size, width=self.width)

    def networks(self) -> list[nn.Module]:
        """One network per member, weights loaded, in evaluation mode (on the CPU)."""
        nets = []
        for state in self.members:
            net = build_model(self.model, self.spec, 0)
            net.load_state_dict(state)
            nets.append(net.eval())
        return nets


class BundleModel(nn.Module):
    """The bundle as one network: images -> probabilities (softmax, or sigmoid per finding for
    multi-label), the mean over members. What `predict` scores with and `export` writes."""

    def __init__(self, nets: list[nn.Module], task: Task) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.multilabel = task is Task.MULTILABEL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [net(x).sigmoid() if self.multilabel else net(x).softmax(1) for net in self.nets]
        return torch.stack(probs).mean(0)  # (B, classes)


def write_bundle(parent: Path, members: dict[str, StateDict], info: dict[str, Any]) -> list[str]:
    """parent/model/{model.safetensors, model.json}; members: site name (or "global") -> state.
    Returns the paths written, relative to parent."""
    folder = parent / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = list(members)
    if len(names) == 1:
        tensors = dict(members[names[0]])
    else:
        # FedBN's site states share the global tensors: copies, as safetensors stores no aliases
        tensors = {f"member{k}.{key}": v.clone() for k, name in enumerate(names)
                   for key, v in members[name].items()}
    weights = encode_state(tensors, {"format": FORMAT})
    (folder / "model.safetensors").write_bytes(weights)
    rule = ("the model's probabilities" if len(names) == 1 else
            "the mean of the site models' probabilities (a new patient belongs to no training site)")
    info = {"format": FORMAT, **info, "prediction": {"members": names, "rule": rule},
            "weights_sha256": hashlib.sha256(weights).hexdigest()}
    from medfed.output import write_json  # output.py imports training types; keep this module light

    write_json(folder / "model.json", info)
    return [f"{FOLDER}/model.safetensors", f"{FOLDER}/model.json"]


def bundle_info(schema: TaskSchema, model: dict[str, Any], intensity_max: float | None,
                reference: Any, operating_point: dict[str, Any], provenance: dict[str, Any]
                ) -> dict[str, Any]:
    """model.json's content (without the members, which write_bundle adds)."""
    size = schema.image_size
    preprocessing = {
        "readers": READERS if schema.spatial_dims else {},
        "intensity_max_in_training": intensity_max,
        "resize": {"size": list(schema.spatial_size), "mode": "area (MONAI Resize)"} if size else None,
        "harmonize": schema.harmonize,
        "harmonize_reference": list(reference) if reference is not None else None,
        "harmonize_at_prediction": {
            "none": "nothing", "zscore": "the inputs of one `medfed predict` call standardized by "
                                         "their own mean and sd (one site of their own)",
            "histogram": "the inputs of one call quantile-matched onto harmonize_reference (one "
                         "site of its own)"}[schema.harmonize],
    }
    return {"task": schema.to_json(), "model": model, "preprocessing": preprocessing,
            "operating_point": operating_point,
            "provenance": {"medfed_version": medfed.__version__, **provenance}}


def binary_operating_point(schema: TaskSchema, probs: np.ndarray | None, labels: np.ndarray | None,
                           rule: OperatingRule | None = None) -> dict[str, Any]:
    """The rule's threshold (default Youden's) on validation for a binary task; the argmax (or 0.5
    per finding) else."""
    if schema.kind is Task.MULTILABEL:
        return {"rule": "each finding positive at p >= 0.5", "threshold": 0.5}
    if schema.kind is not Task.BINARY:
        return {"rule": "argmax", "threshold": None}
    if probs is None or labels is None or len(np.unique(labels)) < 2:
        return {"rule": "default 0.5: the validation split has one class", "threshold": 0.5}
    from medfed.evaluation.operating_point import threshold

    rule = rule or OperatingRule()
    return {"rule": rule.name, "chosen_on": "the sites' pooled validation predictions",
            "threshold": threshold(rule, labels, probs[:, 1])}


def load_bundle(path: Path) -> Bundle:
    """A bundle folder (or a run's --out / a server's --state holding one): checked, one line if not."""
    folder = path / FOLDER if (path / FOLDER / "model.json").is_file() else path
    meta, weights = folder / "model.json", folder / "model.safetensors"
    if not meta.is_file() or not weights.is_file():
        raise ConfigError(f"{path} is not a model bundle: it needs model.json and model.safetensors "
                          "(a `medfed run` --out folder's model/)")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        schema = TaskSchema.from_json(info["task"], f"{meta} task")
        model, members = info["model"], info["prediction"]["members"]
        tensors = decode_state(weights.read_bytes())
        reference = info["preprocessing"]["harmonize_reference"]
        threshold = info["operating_point"]["threshold"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{meta} is not a medfed model.json ({type(exc).__name__}: {exc})") from None
    return Bundle(folder, schema, str(model["name"]), str(model["norm"]), int(model["width"]),
                  _split_members(tensors, len(members)),
                  np.asarray(reference, np.float64) if reference is not None else None,
                  float(threshold) if threshold is not None else None, info)


def _split_members(tensors: StateDict, n: int) -> list[StateDict]:
    if n == 1:
        return [tensors]
    out: list[StateDict] = [{} for _ in range(n)]
    for key, value in tensors.items():
        member, _, name = key.partition(".")
        out[int(member.removeprefix("member"))][name] = value
    return out


def provenance(config_sha256: str | None, summary: dict[str, Any]) -> dict[str, Any]:
    """Configuration hash and the data counts (per site and test), from a run's summary."""
    counts = {site: {k: v for k, v in entry.items() if k in ("n_train", "n_val", "n_test")}
              for site, entry in summary.get("sites", {}).items()}
    return {"config_sha256": config_sha256,
            "mode": summary.get("mode"), "dataset": summary.get("dataset"),
            "algorithm": summary.get("algorithm"), "rounds": summary.get("rounds"),
            "data_summary": {"sites": counts, "n_test": summary.get("n_test")},
            "test": summary.get("test")}


def model_entry(name: str, norm: str, width: int) -> dict[str, Any]:
    return {"name": name, "norm": norm, "width": width}
