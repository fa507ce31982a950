"""`medfed export BUNDLE --onnx OUT.onnx`: the bundle's model (probabilities, the mean over its
members) as ONNX, for a clinic's own inference runtime; checked against PyTorch with ONNX Runtime
on random inputs before it is kept.

onnx and onnxruntime are an optional extra (`pip install 'medfed[onnx]'`): training never needs them.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from medfed.bundle import Bundle, BundleModel
from medfed.errors import ConfigError

TOLERANCE = 1e-5
INSTALL = "medfed export --onnx needs onnx and onnxruntime: pip install 'medfed[onnx]'"


def require_onnx() -> None:
    """One line saying how to install the extra, before anything is built."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{INSTALL} ({', '.join(missing)} not installed)")


def export_onnx(bundle: Bundle, out: Path, seed: int = 0) -> float:
    """Write OUT (input `image` (batch, C, *spatial) in [0, 1] after the bundle's preprocessing;
    output `probabilities`); returns the largest difference from PyTorch on random inputs."""
    require_onnx()
    model = BundleModel(bundle.networks(), bundle.schema.kind).eval()
    shape = (bundle.schema.channels, *bundle.schema.spatial_size)
    example = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # instance norm "train=True": it uses each image's own
        warnings.simplefilter("ignore")  # statistics in evaluation too, as in PyTorch
        torch.onnx.export(model, (example,), str(out), input_names=["image"],
                          output_names=["probabilities"], dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
    difference = max_difference(model, out, shape, seed)
    if difference > TOLERANCE:
        out.unlink()
        raise ConfigError(f"the ONNX model differs from PyTorch by {difference:.2g} "
                          f"(> {TOLERANCE:g}); not written")
    return difference


def max_difference(model: torch.nn.Module, path: Path, shape: tuple[int, ...], seed: int,
                   batch: int = 5) -> float:
    """max |ONNX Runtime - PyTorch| over a random batch (another size than the export's)."""
    import onnxruntime

    x = np.random.default_rng(seed + 1).random((batch, *shape), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"image": x})[0]
    with torch.no_grad():
        torch_probs = model(torch.from_numpy(x)).numpy()
    return float(np.abs(onnx_probs - torch_probs).max())
