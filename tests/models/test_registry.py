"""The model registry: every network builds for the data's shape, norms are a real choice, and
initialisation is seeded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfed import config
from medfed.errors import ConfigError
from medfed.models import MODELS, ModelSpec, build_model, norm_keys, parameter_keys

IMAGE_MODELS = ("cnn", "resnet18", "resnet50", "densenet121")
TABULAR_MODELS = ("mlp", "logistic")
IMAGE_2D_MODELS = ("scatter",)  # tests/models/test_scattering.py
# The smallest 2D side each network takes: DenseNet-121 halves the image five times.
SIDE = {"cnn": 28, "resnet18": 28, "resnet50": 28, "densenet121": 32}


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_registry_names_equal_the_config_names():
    assert set(MODELS) == set(config.MODELS) and len(MODELS) == len(config.MODELS)
    assert set(IMAGE_MODELS + IMAGE_2D_MODELS + TABULAR_MODELS) == set(config.MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_give_one_output_per_class_in_2d(name):
    side = SIDE[name]
    spec = ModelSpec(2, 3, 5, input_size=(side, side))
    out = forward(build_model(name, spec, seed=0), torch.rand(2, 3, side, side))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_cnn_and_resnet18_work_in_3d(name):
    spec = ModelSpec(3, 1, 2, input_size=(8, 8, 8))
    out = forward(build_model(name, spec, seed=0), torch.rand(2, 1, 8, 8, 8))
    assert out.shape == (2, 2)
    modules = build_model(name, ModelSpec(3, 1, 2), 0).modules()
    convs = [m for m in modules if isinstance(m, nn.Conv3d)]
    assert convs, "a 3D model should use 3D convolutions"


@pytest.mark.parametrize("name", TABULAR_MODELS)
def test_tabular_models_take_rows(name):
    out = forward(build_model(name, ModelSpec(0, 13, 2), seed=0), torch.rand(4, 13))
    assert out.shape == (4, 2)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_refuse_tabular_rows(name):
    with pytest.raises(ConfigError, match="needs 2D or 3D images"):
        build_model(name, ModelSpec(0, 13, 2), seed=0)


@pytest.mark.parametrize("name", TABULAR_MODELS)
def test_tabular_models_refuse_images(name):
    with pytest.raises(ConfigError, match="tabular data"):
        build_model(name, ModelSpec(2, 1, 2, input_size=(28, 28)), seed=0)


def test_densenet121_at_28px_is_a_config_error_that_says_what_to_do():
    with pytest.raises(ConfigError) as info:
        build_model("densenet121", ModelSpec(2, 1, 2, input_size=(28, 28)), seed=0)
    assert "28x28" in str(info.value) and "--image-size" in str(info.value)


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        build_model("resnet19", ModelSpec(2, 1, 2), seed=0)
    assert "did you mean 'resnet18'" in str(info.value)
    assert all(name in str(info.value) for name in config.MODELS)


NORM_LAYERS = {"batch": nn.BatchNorm2d, "group": nn.GroupNorm, "instance": nn.InstanceNorm2d}


@pytest.mark.parametrize("name,norm", [
    *[(name, norm) for name in ("cnn", "densenet121") for norm in NORM_LAYERS],
    ("resnet18", "batch"),
    ("resnet18", "group"),
    ("resnet18", "instance"),
    ("resnet50", "group"),
])
def test_the_norm_choice_sets_the_layer_type(name, norm):
    model = build_model(name, ModelSpec(2, 1, 2, norm=norm), seed=0)
    kinds = {type(m) for m in model.modules()}
    assert NORM_LAYERS[norm] in kinds
    assert not (kinds & (set(NORM_LAYERS.values()) - {NORM_LAYERS[norm]}))


def test_mlp_takes_batch_or_group_norm_only():
    mlp = build_model("mlp", ModelSpec(0, 8, 2, norm="group"), seed=0)
    assert any(isinstance(m, nn.GroupNorm) for m in mlp.modules())
    with pytest.raises(ConfigError, match="batch or group"):
        build_model("mlp", ModelSpec(0, 8, 2, norm="instance"), seed=0)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "mlp"])
def test_same_seed_same_initial_weights_and_different_seed_different(name):
    spec = ModelSpec(0, 8, 2) if name == "mlp" else ModelSpec(2, 1, 2)
    a = build_model(name, spec, seed=3).state_dict()
    b = build_model(name, spec, seed=3).state_dict()
    c = build_model(name, spec, seed=4).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_building_a_model_leaves_the_global_torch_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("cnn", ModelSpec(2, 1, 2), seed=0)
    torch.testing.assert_close(torch.rand(3), expected)


def test_norm_keys_are_exactly_the_batchnorm_entries():
    model = build_model("cnn", ModelSpec(2, 1, 2), seed=0)
    bn_prefixes = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn_prefixes) == 5
    expected = {f"{p}.{k}" for p in bn_prefixes
                for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert norm_keys(model) == expected
    assert norm_keys(model) <= set(model.state_dict())
    assert not any("conv" in k or k.startswith("head") for k in norm_keys(model))


def test_norm_keys_with_group_norm_have_no_running_statistics():
    model = build_model("cnn", ModelSpec(2, 1, 2, norm="group"), seed=0)
    keys = norm_keys(model)
    assert len(keys) == 10 and all(k.endswith((".weight", ".bias")) for k in keys)


def test_parameter_keys_are_the_trainable_ones():
    model = build_model("cnn", ModelSpec(2, 1, 2), seed=0)
    keys = parameter_keys(model)
    assert keys == {k for k, p in model.named_parameters() if p.requires_grad}
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in keys)
    assert keys | {k for k, _ in model.named_buffers()} == set(model.state_dict())


def test_instance_norm_on_a_map_shrunk_to_one_pixel_is_a_config_error():
    # DenseNet-121 brings 32 px down to 1x1, where instance norm has nothing to normalize.
    with pytest.raises(ConfigError, match="--image-size 64"):
        build_model("densenet121", ModelSpec(2, 1, 2, norm="instance", input_size=(32, 32)), seed=0)


@pytest.mark.parametrize("width,parameters", [(16, 70_018), (60, 975_362)])
def test_the_cnns_width_sets_its_capacity(width, parameters):
    # width 60 is the ~1M-parameter model of the secure-aggregation round benchmark.
    model = build_model("cnn", ModelSpec(2, 1, 2, norm="instance", width=width), seed=0)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert forward(model, torch.rand(2, 1, 28, 28)).shape == (2, 2)
    assert model.features[0].conv.out_channels == width


@pytest.mark.parametrize("width", [60, 12, 20])
def test_group_norm_takes_any_cnn_width(width):
    """Group norm's groups divide each stage's channels (60 used to stop with a traceback)."""
    model = build_model("cnn", ModelSpec(2, 1, 2, norm="group", width=width, input_size=(28, 28)), 0)
    groups = [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert groups and all(g in (4, 8) for g in groups)
    assert forward(model, torch.rand(2, 1, 28, 28)).shape == (2, 2)
