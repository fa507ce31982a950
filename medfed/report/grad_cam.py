"""Grad-CAM (Selvaraju et al., ICCV 2017): where in an image the evidence for a class lies.

The maps of one layer's activations, each weighted by the mean gradient of the class's logit over
it, summed, kept where positive, upsampled to the image and scaled to [0, 1] per image: 1 where the
evidence for the class is strongest.

Written here rather than taken from MONAI's GradCAM for two reasons. MONAI's default
post-processing maps each map's (min, max) to (1, 0) (Project-MONAI/tutorials#1796): drawn as it
comes, the report coloured the regions that mattered least. And importing MONAI took about 2 s of
every `medfed run`, for this figure alone. tests/report/test_grad_cam.py checks these maps against
MONAI's GradCAM given a (min, max) -> (0, 1) scaling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLE = {4: "bilinear", 5: "trilinear"}  # by the input's dimensions: 2D or 3D images


def grad_cam(model: nn.Module, layer: str, x: torch.Tensor, class_idx: int | None = None
             ) -> np.ndarray:
    """Maps (B, *spatial) in [0, 1] of `layer`'s evidence for class_idx (None: each image's
    predicted class) in the images x (B, C, *spatial). The model is run in eval mode and left in
    the mode it was in; no parameter's gradient is touched."""
    activations, logits = _forward(model, layer, x)
    index = logits.argmax(1) if class_idx is None else torch.full(
        (len(x),), class_idx, dtype=torch.long, device=logits.device)
    score = logits.gather(1, index[:, None]).sum()
    (gradients,) = torch.autograd.grad(score, activations)
    spatial = tuple(range(2, activations.ndim))
    weights = gradients.mean(dim=spatial, keepdim=True)
    cam = torch.relu((weights * activations).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[2:], mode=UPSAMPLE[x.ndim], align_corners=False)[:, 0]
    return _scaled(cam).cpu().numpy()


def _forward(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's output, the logits), with gradients enabled."""
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _module, _inputs, output: captured.append(output))
    training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))  # a graph even if no weight is trained
    finally:
        handle.remove()
        model.train(training)
    return captured[-1], logits


def _scaled(cam: torch.Tensor) -> torch.Tensor:
    """Each map's (min, max) to (0, 1); a flat map (no evidence anywhere) is all 0."""
    flat = cam.flatten(1)
    shape = (-1, *[1] * (cam.ndim - 1))
    low = flat.min(1).values.view(shape)
    span = (flat.max(1).values.view(shape) - low)
    return torch.where(span > 0, (cam - low) / span.clamp_min(torch.finfo(cam.dtype).tiny), 0.0)
