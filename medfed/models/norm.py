"""The normalization layer is an explicit choice, named the same way for every network."""

from __future__ import annotations

from medfed.errors import ConfigError

GROUPS = 8


def monai_norm(norm: str) -> str | tuple[str, dict]:
    """The `norm` argument MONAI's networks and blocks take."""
    if norm == "batch":
        return "batch"
    if norm == "group":
        return ("group", {"num_groups": GROUPS})
    if norm == "instance":
        return ("instance", {"affine": True})
    raise ConfigError(f"unknown norm '{norm}'; valid: batch, group, instance")
