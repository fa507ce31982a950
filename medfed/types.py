"""Small shared types: what crosses between data, sites, server and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch

StateDict = dict[str, torch.Tensor]
SiteId = str
Metrics = dict[str, float]


class Task(StrEnum):
    """What the labels mean; decides the loss, the output layer and the metrics."""

    BINARY = "binary"
    MULTICLASS = "multi-class"
    MULTILABEL = "multi-label"  # one sigmoid per finding (ChestMNIST, ChestX-ray14)
    ORDINAL = "ordinal"  # ordered grades (RetinaMNIST); trained as multi-class, also scored by kappa


class Prediction(StrEnum):
    """How a trained strategy predicts for a patient."""

    GLOBAL = "global"  # the one global model
    SITE = "site"  # the model of the patient's own site (FedBN); the mean of them if unknown
    ENSEMBLE = "ensemble"  # the mean of every site model's probabilities


@dataclass(frozen=True)
class Update:
    """What one site returns after local training. The state never carries patient data."""

    site: SiteId
    state: StateDict
    n_samples: int  # training samples seen per epoch: the FedAvg weight
    n_steps: int  # optimizer steps taken (FedNova needs it)
    metrics: Metrics = field(default_factory=dict)


# SCAFFOLD's control variates travel in the same safetensors message as the model, under this
# prefix: the server's c with the model it sends, a site's change of c_k with its update.
CONTROL_PREFIX = "scaffold.control/"


def split_control(state: StateDict) -> tuple[StateDict, StateDict]:
    """A SCAFFOLD message -> (the model, the control variate keyed by parameter name)."""
    model = {k: v for k, v in state.items() if not k.startswith(CONTROL_PREFIX)}
    control = {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
    return model, control
