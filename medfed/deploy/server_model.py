"""The coordinator's model: built from the task schema and the plan, never from data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from medfed.config import RunConfig
from medfed.models import build_model, norm_keys, parameter_keys
from medfed.task_schema import TaskSchema
from medfed.types import StateDict


@dataclass(frozen=True)
class ServerModel:
    """The model the task schema describes: what the coordinator knows instead of any data."""

    initial: StateDict
    parameter_keys: frozenset[str]
    norm_keys: frozenset[str]
    network: Callable[[], nn.Module]  # a new copy of the network (split learning's middle)
    input_shape: tuple[int, ...]  # one sample's shape

    @classmethod
    def build(cls, config: RunConfig, task: TaskSchema) -> ServerModel:
        spec = task.model_spec(config.model)
        model = build_model(config.model.model, spec, config.seed)
        return cls({k: v.clone() for k, v in model.state_dict().items()}, parameter_keys(model),
                   norm_keys(model), lambda: build_model(config.model.model, spec, config.seed),
                   (spec.in_channels, *spec.input_size))
