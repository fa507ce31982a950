"""Run configurations in and out: TOML files, CLI overrides, and turning plain values into the
validated dataclasses of medfed/config.py (what each setting means and allows lives there).

Every key is optional; an unknown key, a value of the wrong type or a bad value is one ConfigError
that names it and what is valid.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from medfed.config import (
    AdversaryConfig,
    DataConfig,
    FederationConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    TrainingConfig,
)
from medfed.config_execution import ExecutionConfig
from medfed.errors import ConfigError
from medfed.registry import unknown_choice

SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig,
    "federation": FederationConfig, "training": TrainingConfig,
    "adversary": AdversaryConfig,
    "privacy": PrivacyConfig,
    "execution": ExecutionConfig,
}


def read_toml(path: str | Path, what: str = "config file", error: type[Exception] = ConfigError
              ) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is one `error` naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid TOML: {exc}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML file into a validated RunConfig. A federation file's [task] and [deployment]
    tables (read by `medfed server`, medfed/deploy/settings.py) are left aside: in simulation the
    task is read off the data of [data]."""
    raw = read_toml(path)
    raw.pop("deployment", None)
    raw.pop("task", None)
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    top = {f.name for f in fields(RunConfig)} - set(SECTIONS)
    unknown = set(raw) - top - set(SECTIONS)
    if unknown:
        raise unknown_choice(f"key in {source}", min(unknown), sorted(top | set(SECTIONS)))
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{name}] must be a table of keys, got {value!r}")
            values[name] = _build(SECTIONS[name], value, f"[{name}]")
        else:
            values[name] = _coerce(name, value, _hints(RunConfig)[name])
    return RunConfig(**values)


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply flat key=value overrides (from CLI flags); each key belongs to exactly one section."""
    top_changes: dict[str, Any] = {}
    section_changes: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in overrides.items():
        section = section_of(key)
        if section is None:
            top_changes[key] = value
        else:
            section_changes[section][key] = value
    for name, changes in section_changes.items():
        if changes:
            current = getattr(config, name)
            top_changes[name] = _build(type(current), {**dataclasses.asdict(current), **changes},
                                       f"[{name}]")
    return replace(config, **top_changes)


def section_of(key: str) -> str | None:
    for name, cls in SECTIONS.items():
        if key in _hints(cls):
            return name
    if key in _hints(RunConfig) and key not in SECTIONS:
        return None
    valid = sorted({k for cls in (RunConfig, *SECTIONS.values()) for k in _hints(cls)} - set(SECTIONS)
                   | {"model"})
    raise unknown_choice("config key", key, valid)


def to_toml(config: RunConfig) -> str:
    """The resolved config as TOML (None values are left out: they mean 'the default')."""
    def clean(d: dict[str, Any]) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

    raw = dataclasses.asdict(config)
    out = clean({k: v for k, v in raw.items() if k not in SECTIONS})
    for name in SECTIONS:
        out[name] = clean(raw[name])
    return tomli_w.dumps(out)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    for key in values:
        if key not in hints:
            raise unknown_choice(f"key in {where}", key, list(hints))
    return cls(**{k: _coerce(f"{where} {k}", v, hints[k]) for k, v in values.items()})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check a TOML/flag value against a field's type hint; ints are accepted where floats are."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(_coerce(name, v, typing.get_args(hint)[0]) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
    return value
