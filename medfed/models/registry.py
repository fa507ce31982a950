"""The model registry. Every builder takes the same ModelSpec, so data decides shapes, not users."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from medfed.errors import ConfigError
from medfed.models.cnn import WIDTH, SmallCNN
from medfed.models.norm import enforce_norm, monai_norm
from medfed.models.tabular import logistic, mlp
from medfed.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    spatial_dims: int  # 2 or 3 for images, 0 for tabular rows
    in_channels: int  # image channels, or features for tabular rows
    num_outputs: int
    norm: str = "batch"
    input_size: tuple[int, ...] = ()  # spatial size (H, W) or (D, H, W); checked when given
    width: int = WIDTH  # cnn only: channels of its first stage (the model's capacity)


Builder = Callable[[ModelSpec], nn.Module]
IMAGES = ((2, 3), "needs 2D or 3D images; for tabular data use mlp or logistic")
TABULAR = ((0,), "is for tabular data; for images use cnn, resnet18, resnet50 or densenet121")


def _for(inputs: tuple[tuple[int, ...], str], name: str, build: Builder) -> Builder:
    """The builder, refusing data of the wrong kind with the models that would fit it."""
    dims, refusal = inputs

    def checked(spec: ModelSpec) -> nn.Module:
        if spec.spatial_dims not in dims:
            raise ConfigError(f"--model {name} {refusal}")
        return build(spec)
    return checked


# MONAI's networks are imported when one is built: importing MONAI costs seconds, and the default
# cnn (cnn.py) does without it.

def _resnet(depth: int) -> Builder:
    def build(s: ModelSpec) -> nn.Module:
        from monai.networks import nets

        factory = {18: nets.resnet18, 50: nets.resnet50}[depth]
        return enforce_norm(factory(spatial_dims=s.spatial_dims, n_input_channels=s.in_channels,
                                    num_classes=s.num_outputs, norm=monai_norm(s.norm)), s.norm)
    return build


def _densenet121(s: ModelSpec) -> nn.Module:
    from monai.networks import nets

    return nets.DenseNet121(spatial_dims=s.spatial_dims, in_channels=s.in_channels,
                            out_channels=s.num_outputs, norm=monai_norm(s.norm))


def _scatter(spec: ModelSpec) -> nn.Module:
    from medfed.models.scattering import ScatterNet

    if len(spec.input_size) != 2:
        raise ConfigError("--model scatter needs the images' size (2D)")
    return ScatterNet(spec.in_channels, spec.num_outputs, spec.input_size, 32)


MODELS: Registry[Builder] = Registry("model", {
    "cnn": _for(IMAGES, "cnn", lambda s: SmallCNN(s.spatial_dims, s.in_channels, s.num_outputs, s.norm,
                                                        s.width)),
    "resnet18": _for(IMAGES, "resnet18", _resnet(18)),
    "resnet50": _for(IMAGES, "resnet50", _resnet(50)),
    "densenet121": _for(IMAGES, "densenet121", _densenet121),
    "scatter": _for(((2,), "needs 2D images (a 2D scattering transform)"), "scatter",
                    lambda s: _scatter(s)),
    "mlp": _for(TABULAR, "mlp", lambda s: mlp(s.in_channels, s.num_outputs, s.norm)),
    "logistic": _for(TABULAR, "logistic", lambda s: logistic(s.in_channels, s.num_outputs)),
})


def build_model(name: str, spec: ModelSpec, seed: int, check_input: bool = True) -> nn.Module:
    """A freshly initialised network; the same seed gives the same initial weights. check_input:
    a dry forward pass at spec.input_size (done once per run, not for every site's copy)."""
    builder = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(spec)
    if spec.input_size and check_input:
        _check_input_size(name, model, spec)
    return model


def _check_input_size(name: str, model: nn.Module, spec: ModelSpec) -> None:
    """A dry forward pass, so that an image too small for a deep network fails here, clearly,
    rather than as a shape error deep inside training."""
    probe = torch.zeros(1, spec.in_channels, *spec.input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(probe)
    except (RuntimeError, ValueError):  # conv/pool shape errors; instance norm on a 1x1 map
        raise ConfigError(f"--model {name} cannot take {'x'.join(map(str, spec.input_size))} "
                          "inputs (too small for its down-sampling); pass --image-size 64 or use "
                          "--model cnn") from None
    finally:
        model.train(was_training)


NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys of normalization layers (affine weights and running statistics): FedBN keeps
    these at each site."""
    keys = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            keys |= {f"{prefix}.{k}" if prefix else k for k in module.state_dict()}
    return frozenset(keys)


def parameter_keys(model: nn.Module) -> frozenset[str]:
    """Keys of trainable parameters (buffers such as running statistics are not among them)."""
    return frozenset(name for name, _ in model.named_parameters())
