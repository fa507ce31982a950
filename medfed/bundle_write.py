"""Writing the model bundle (bundle.py) at the end of a simulation (`medfed run`) and of a deployed
federation (`medfed server`): the same model.json from what each mode knows."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from medfed.algorithms.strategy import Strategy
from medfed.bundle import binary_operating_point, bundle_info, model_entry, provenance, write_bundle
from medfed.config import RunConfig
from medfed.config_file import to_toml
from medfed.data.dataset import Samples
from medfed.evaluation.operating_point import chosen
from medfed.evaluation.operating_rule import OperatingRule
from medfed.experiment import Setup, members
from medfed.task_schema import TaskSchema
from medfed.types import Prediction, SiteId, StateDict, Task


def bundle_members(strategy: Strategy, sites: list[SiteId]) -> dict[str, StateDict]:
    """The global model, or each trained site's model for a personalized strategy."""
    if strategy.prediction is Prediction.GLOBAL:
        return {"global": strategy.global_state}
    return {s: strategy.site_state(s) for s in members(strategy, sites)}


def simulation_bundle(out: Path, setup: Setup, strategy: Strategy, summary: dict[str, Any],
                      rule: OperatingRule | None = None) -> list[str]:
    """OUT/model/: the operating point is the rule's (default Youden's) on the sites' validation
    splits, scored as the bundle scores (the mean over its members)."""
    config, source = setup.config, setup.federation.source
    size = setup.spec.input_size[0] if setup.spec.input_size else None
    schema = TaskSchema.of_source(source, size, config.data.harmonize)
    models = bundle_members(strategy, setup.federation.site_ids)
    probs = labels = None
    if schema.kind is Task.BINARY:
        val = Samples.concat([d.val for d in setup.federation.sites.values()])
        if len(val):
            probs, _ = setup.predictor.predict_mean(list(models.values()), val)
            labels = val.y
    info = bundle_info(
        schema, _model(config), source.max_value if source.spatial_dims else None,
        source.harmonize_reference, binary_operating_point(schema, probs, labels, rule),
        provenance(hashlib.sha256(to_toml(config).encode()).hexdigest(), summary))
    return write_bundle(out, models, info)


def deployment_bundle(folder: Path, config: RunConfig, task: TaskSchema, strategy: Strategy,
                      sites: list[SiteId], summary: dict[str, Any], reference: Any,
                      config_sha256: str | None, audit_head: str | None) -> list[str]:
    """STATE/model/: the operating point the sites' pooled validation scores gave (summary.json's);
    the intensity scale is each site's loader's (model.json's readers)."""
    point = summary.get("operating_point")
    point = point if chosen(point) else binary_operating_point(task, None, None)
    prov = provenance(config_sha256, summary) | {"audit_head_sha256": audit_head}
    ref = np.asarray(reference, np.float64).tolist() if reference is not None else None
    info = bundle_info(task, _model(config), None, ref, point, prov)
    return write_bundle(folder, bundle_members(strategy, sites), info)


def _model(config: RunConfig) -> dict[str, Any]:
    return model_entry(config.model.model, config.model.norm, config.model.width)
