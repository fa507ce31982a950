"""Networks, chosen by name from an explicit registry; see registry.py."""

from medfed.models.registry import MODELS, ModelSpec, build_model, norm_keys, parameter_keys

__all__ = ["MODELS", "ModelSpec", "build_model", "norm_keys", "parameter_keys"]
