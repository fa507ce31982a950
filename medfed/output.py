"""What a run leaves in its --out folder: summary.json, config.toml, rounds.jsonl, model weights."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medfed.config import RunConfig
from medfed.config_file import to_toml
from medfed.errors import ConfigError
from medfed.server.round_loop import RoundResult
from medfed.transport.codec import encode_state
from medfed.types import SiteId, StateDict


def prepare_out_dir(path: str | Path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data: Any, private: bool = False) -> None:
    """JSON without NaN (not valid JSON): undefined metrics are written as null. private: readable
    by its owner only (mode 0600), from its creation on (a deployment's state)."""
    text = (json.dumps(finite(data), indent=2) + "\n").encode()
    if not private:
        path.write_bytes(text)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text)
    os.chmod(path, 0o600)


def write_config(out: Path, config: RunConfig) -> None:
    (out / "config.toml").write_text(to_toml(config), encoding="utf-8")


def write_rounds(out: Path, history: list[RoundResult], name: str = "rounds.jsonl") -> None:
    """One JSON line per round; `name` may lie in a subfolder (compare's rounds/<algorithm>-seed<k>)."""
    write_round_lines(out, [round_line(result) for result in history], name)


def write_round_lines(out: Path, lines: list[str], name: str = "rounds.jsonl") -> None:
    """rounds.jsonl from rounds already encoded (round_line)."""
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def round_line(result: RoundResult) -> str:
    """A round as one line of rounds.jsonl."""
    return json.dumps(round_record(result))


def round_record(result: RoundResult) -> dict[str, Any]:
    """A round as rounds.jsonl, the state database and summary.json's failed_updates number it:
    from 1, as the console and the audit trail do (RoundResult.round counts from 0)."""
    return {**finite(asdict(result)), "round": result.round + 1}


def write_models(out: Path, models: dict[SiteId | None, StateDict], metadata: dict[str, Any]
                 ) -> list[str]:
    """The global model as model.safetensors; site models (FedBN, ensemble) under models/."""
    written = []
    for site, state in models.items():
        path = out / "model.safetensors" if site is None else out / "models" / f"{site}.safetensors"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_state(state, {**metadata, "site": site}))
        written.append(str(path.relative_to(out)))
    return written


def finite(value: Any) -> Any:
    """The value with every NaN or infinite float as None: JSON has no NaN (undefined metrics)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
