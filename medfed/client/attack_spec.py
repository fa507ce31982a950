"""What a simulated attack is, parsed from its name (no torch here: configs are checked before
torch loads). attacks.py carries the attacks out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from medfed.errors import ConfigError
from medfed.registry import unknown_choice

NONE = "none"
SHOWN = ["label-flip", "scale:F", "sign-flip", "noise[:S]", "nan", "free-ride", NONE]


class AttackKind(StrEnum):
    LABEL_FLIP = "label-flip"
    SCALE = "scale"
    SIGN_FLIP = "sign-flip"
    NOISE = "noise"
    NAN = "nan"
    FREE_RIDE = "free-ride"


@dataclass(frozen=True)
class Attack:
    kind: AttackKind
    factor: float = 1.0  # the scale F, or the noise's standard deviation S

    @staticmethod
    def parse(text: str) -> Attack:
        """'scale:100' -> Attack(SCALE, 100.0); a wrong kind or factor is one clear ConfigError."""
        name, _, arg = text.partition(":")
        if name not in {k.value for k in AttackKind}:
            raise unknown_choice("attack", text, SHOWN)
        kind = AttackKind(name)
        if kind is AttackKind.SCALE and not arg:
            raise ConfigError("attack scale needs a factor, e.g. scale:100 (or scale:-10 to flip too)")
        if arg and kind not in (AttackKind.SCALE, AttackKind.NOISE):
            raise ConfigError(f"attack {name} takes no ':{arg}'; only scale:F and noise:S do")
        try:
            factor = float(arg) if arg else 1.0
        except ValueError:
            raise ConfigError(f"attack {name} needs a number after ':', got '{arg}'") from None
        if not math.isfinite(factor) or (kind is AttackKind.NOISE and factor <= 0):
            raise ConfigError(f"attack {text}: the factor must be finite (and > 0 for noise)")
        return Attack(kind, factor)

    @property
    def poisons_data(self) -> bool:
        return self.kind is AttackKind.LABEL_FLIP


def parse_attack(text: str) -> Attack | None:
    """None for 'none' (every site honest)."""
    return None if text == NONE else Attack.parse(text)
