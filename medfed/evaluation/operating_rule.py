"""How an operating point is chosen: Youden's J, or a target sensitivity (`--target-sensitivity`).

Kept apart from operating_point.py, which applies the rule, so that the command line checks the
flag before numpy, scikit-learn and torch load.
"""

from __future__ import annotations

from dataclasses import dataclass

from medfed.errors import ConfigError


@dataclass(frozen=True)
class OperatingRule:
    """Youden's J (target_sensitivity None) or the highest threshold whose validation sensitivity
    reaches target_sensitivity (the fewest false positives at that sensitivity)."""

    target_sensitivity: float | None = None

    def __post_init__(self) -> None:
        target = self.target_sensitivity
        if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
            raise ConfigError(f"--target-sensitivity must be in (0, 1], e.g. 0.9; got "
                              f"{target}")

    @property
    def name(self) -> str:
        """summary.json's `rule` (compare.json's `operating_point_rule`)."""
        target = self.target_sensitivity
        return "youden" if target is None else f"sensitivity >= {target:g}"

    def describe(self) -> str:
        """The rule in words, for the console and the report."""
        if self.target_sensitivity is None:
            return "Youden's J (sensitivity + specificity - 1 highest)"
        return f"the highest threshold reaching validation sensitivity {self.target_sensitivity:g}"
