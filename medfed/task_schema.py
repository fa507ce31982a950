"""The task a federation learns, declared without any data: what kind of labels, which classes,
what an input looks like, and how sites preprocess it.

The coordinator of a deployment builds its model from this schema alone (it never opens a data
file); every site computes the same schema from its own data and reports it when it connects, and a
site whose data does not fit is refused at once with the difference named. In simulation the
schema is read off the loaded data set, so both modes build the same model.

    [task]                       # in a federation file
    kind = "binary"              # binary, multi-class, multi-label, ordinal
    classes = ["normal", "pneumonia"]
    spatial_dims = 2             # 2 or 3 for images, 0 for tabular rows
    channels = 1                 # image channels, or the number of features of a tabular row
    image_size = 64              # side length every site resizes its images to (images only)
    harmonize = "none"           # none, zscore, or histogram (a reference shared by the sites)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medfed.config import HARMONIZATIONS, ModelConfig
from medfed.data.dataset import DataSource
from medfed.errors import ConfigError
from medfed.models import ModelSpec
from medfed.registry import unknown_choice
from medfed.types import Task

KEYS = ("kind", "classes", "spatial_dims", "channels", "image_size", "harmonize")


@dataclass(frozen=True)
class TaskSchema:
    kind: Task
    classes: tuple[str, ...]
    spatial_dims: int
    channels: int
    image_size: int | None = None  # None: tabular rows (no spatial size)
    harmonize: str = "none"

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ConfigError(f"[task] classes needs at least 2 names, got {list(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"[task] classes has a repeated name: {list(self.classes)}")
        if self.spatial_dims not in (0, 2, 3):
            raise ConfigError(f"[task] spatial_dims must be 0 (tabular), 2 or 3, got {self.spatial_dims}")
        if self.channels < 1:
            raise ConfigError(f"[task] channels must be >= 1, got {self.channels}")
        if self.spatial_dims and (self.image_size is None or self.image_size < 8):
            raise ConfigError(f"[task] image_size must be >= 8 for images, got {self.image_size}")
        if self.harmonize not in HARMONIZATIONS:
            raise unknown_choice("[task] harmonize", self.harmonize, list(HARMONIZATIONS))
        if self.harmonize != "none" and not self.spatial_dims:
            raise ConfigError(f"[task] harmonize {self.harmonize} is for images, not tabular rows")
        if self.kind is Task.BINARY and len(self.classes) != 2:
            raise ConfigError(f"[task] kind binary needs exactly 2 classes, got {len(self.classes)}")

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return (self.image_size,) * self.spatial_dims if self.image_size else ()

    def model_spec(self, model: ModelConfig) -> ModelSpec:
        return ModelSpec(self.spatial_dims, self.channels, len(self.classes), model.norm,
                         input_size=self.spatial_size, width=model.width)

    def differences(self, site: TaskSchema) -> list[str]:
        """What a site's data has that this (the federation's) schema does not; image size and
        harmonization are the site's to adapt to, so they never differ."""
        out = []
        for name in ("kind", "classes", "spatial_dims", "channels"):
            mine, theirs = getattr(self, name), getattr(site, name)
            if mine != theirs:
                out.append(f"{name} {_show(theirs)}, expected {_show(mine)}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "classes": list(self.classes),
                "spatial_dims": self.spatial_dims, "channels": self.channels,
                "image_size": self.image_size, "harmonize": self.harmonize}

    @classmethod
    def from_json(cls, raw: Any, where: str = "[task]") -> TaskSchema:
        """From a federation file's [task] table or a site's hello (untrusted): one ConfigError."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table of keys")
        unknown = set(raw) - set(KEYS)
        if unknown:
            raise unknown_choice(f"key in {where}", min(unknown), list(KEYS))
        missing = [k for k in ("kind", "classes", "spatial_dims", "channels") if k not in raw]
        if missing:
            raise ConfigError(f"{where} needs {', '.join(missing)} (keys: {', '.join(KEYS)})")
        kinds = [str(t) for t in Task]
        if raw["kind"] not in kinds:
            raise unknown_choice(f"{where} kind", str(raw["kind"]), kinds)
        classes = raw["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) and 0 < len(c) <= 200
                                                    for c in classes) or len(classes) > 10_000:
            raise ConfigError(f"{where} classes must be a list of class names")
        return cls(Task(raw["kind"]), tuple(classes), _int(raw, "spatial_dims", where),
                   _int(raw, "channels", where), _int(raw, "image_size", where, optional=True),
                   str(raw.get("harmonize", "none")))

    @classmethod
    def of_source(cls, source: DataSource, image_size: int | None, harmonize: str = "none"
                  ) -> TaskSchema:
        """The schema of loaded data: images at image_size (default: their own size)."""
        dims = source.spatial_dims
        size = (image_size or int(source.pool.x.shape[2])) if dims else None
        return cls(source.task, tuple(source.class_names), dims, source.in_channels, size,
                   harmonize if dims else "none")


def _int(raw: dict[str, Any], key: str, where: str, optional: bool = False) -> Any:
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -1 < value < 1 << 20:
        raise ConfigError(f"{where} {key} must be a whole number, got {value!r}")
    return value


def _show(value: Any) -> str:
    return ", ".join(value) if isinstance(value, tuple) else str(value)
