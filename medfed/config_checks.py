"""Checks shared by the run configuration's sections (config.py, config_privacy.py): each raises
ConfigError naming the field, the bad value and what is valid."""

from __future__ import annotations

from medfed.errors import ConfigError
from medfed.registry import unknown_choice


def choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise unknown_choice(name, value, list(valid))


def at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
