"""Whether an --out folder may be written: never over a folder of other files by accident."""

from __future__ import annotations

from pathlib import Path

from medfed.errors import ConfigError

# What every `medfed run` / `medfed compare` folder holds from its start (config.toml is written
# first), so an earlier output (finished or interrupted) may be written again.
MARKERS = ("config.toml", "summary.json")


def check_out_dir(out: Path | None, force: bool = False) -> Path | None:
    """out, if it is missing, empty, a previous medfed output, or force is given; else one line."""
    if out is None or force or not out.is_dir():
        return out
    if not any(out.iterdir()) or any((out / m).is_file() for m in MARKERS):
        return out
    raise ConfigError(f"--out {out} is a non-empty folder that is not a medfed output; give a new "
                      "folder, or add --force to write into it")
