"""Grad-CAM (medfed/report/grad_cam.py): against MONAI's GradCAM as independent code, and on an
image whose evidence lies in one known place.

Hand mutations that must fail a test here: scale a map's (min, max) to (1, 0), as MONAI's default
post-processing does (the report coloured the regions that mattered least); weight the activations
by the gradient of the wrong class; drop the ReLU; leave the model in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medfed.models.cnn import SmallCNN
from medfed.report.artifacts import target_layer
from medfed.report.grad_cam import grad_cam


def _unit_scaled(maps: torch.Tensor) -> torch.Tensor:
    """MONAI's post-processing hook, with each map's (min, max) to (0, 1) instead of its default
    (1, 0)."""
    flat = maps.flatten(1)
    shape = (-1, *[1] * (maps.ndim - 1))
    low, high = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    return (maps - low) / (high - low)


@pytest.mark.parametrize(("dims", "class_idx"), [(2, 1), (2, None), (3, 0)])
def test_the_maps_are_monai_s_gradcam_scaled_from_0_to_1(dims, class_idx):
    from monai.visualize import GradCAM

    torch.manual_seed(0)
    model = SmallCNN(dims, 1, 3, "instance")
    x = torch.randn(4, 1, *[16] * dims)
    layer = target_layer(model)
    cam = GradCAM(nn_module=model, target_layers=layer, postprocessing=_unit_scaled)
    # One image at a time: given no class, MONAI scores logits[:, argmax of every image] of a
    # batch, so each image's map mixes in the other images' predicted classes.
    monai_maps = np.concatenate([cam(x=x[i:i + 1], class_idx=class_idx).detach().numpy()[:, 0]
                                 for i in range(len(x))])
    ours = grad_cam(model, layer, x, class_idx)
    assert ours.shape == (4, *[16] * dims)
    np.testing.assert_allclose(ours, monai_maps, atol=1e-5)


class BrightIsEvidence(nn.Module):
    """Class 1's logit is the image's mean brightness after a 1x1 convolution and a ReLU: the
    evidence for class 1 is exactly where the image is bright; class 0's is the opposite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size=1)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_the_map_is_1_where_the_evidence_lies_and_0_elsewhere():
    """A bright square in the top-left corner of a dark image drives class 1: the map is high
    there and low everywhere else (MONAI's default scaling gives the inverse)."""
    model = BrightIsEvidence().train()
    x = torch.zeros(1, 1, 16, 16)
    x[..., :4, :4] = 1.0
    heat = grad_cam(model, "conv", x, class_idx=1)[0]
    assert heat[:4, :4].min() > 0.9 and heat[8:, 8:].max() < 0.1
    assert model.training  # left in the mode it was in
    assert all(p.grad is None for p in model.parameters())  # no weight's gradient touched


def test_a_map_without_evidence_is_all_zero_not_nan():
    model = BrightIsEvidence()
    heat = grad_cam(model, "conv", torch.zeros(2, 1, 8, 8), class_idx=1)
    assert np.isfinite(heat).all() and (heat == 0).all()
