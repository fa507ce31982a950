"""Explicit name -> object registries (models, data sets, partitioners, algorithms).

Names come from users, so an unknown one gets the list of valid names and a "did you mean".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from medfed.errors import ConfigError

T = TypeVar("T")


def unknown_choice(kind: str, name: object, valid: list[str]) -> ConfigError:
    guess = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    return ConfigError(f"unknown {kind} '{name}'{hint}; valid: {', '.join(valid)}")


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, kind: str, entries: dict[str, T]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise unknown_choice(self.kind, name, list(self._entries))
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
