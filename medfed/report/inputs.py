"""A finished run or compare folder read back: the report is built from disk alone, so that
`medfed report DIR` rebuilds the same page that `medfed run` and `medfed compare` wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medfed.errors import MedfedError
from medfed.report.artifacts import read_predictions


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedfedError(f"{path} is not valid JSON ({_first_line(exc)}); restore it, or write it "
                          "again with the run that made it") from None


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """One dict per round of a rounds .jsonl file; [] when the file was not saved."""
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedfedError(f"{path} is not valid JSON lines ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def read_scores(path: Path, task: str) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The test labels and each model's probability of the positive class from a predictions .npz;
    labels None without the file, scores {} without it or for a task that is not binary."""
    labels, probs = read_predictions(path) if path.is_file() else (None, {})
    scores = {n: p[:, -1] for n, p in probs.items()} if task == "binary" and labels is not None else {}
    return labels, scores
