"""`--tensorboard`: the round metrics of a run or compare folder as TensorBoard event files under
DIR/tensorboard/<algorithm> (compare: <algorithm>-seed<k>), written from the saved rounds files.

torch.utils.tensorboard needs the optional `tensorboard` package (pip install tensorboard, or the
`tensorboard` extra of medfed); without it --tensorboard fails with one line before training.
"""

from __future__ import annotations

import json
from pathlib import Path

from medfed.errors import MedfedError

MISSING = "--tensorboard needs the tensorboard package: pip install tensorboard"


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise MedfedError(MISSING) from None


def write_tensorboard(folder: str | Path) -> list[Path]:
    """One event-file folder per rounds file; returns the folders written."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(folder)
    if (folder / "compare.json").is_file():
        runs = {p.stem: p for p in sorted((folder / "rounds").glob("*.jsonl"))}
    else:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        runs = {summary["algorithm"]: folder / "rounds.jsonl"}
    written = []
    for name, path in runs.items():
        target = folder / "tensorboard" / name
        with SummaryWriter(log_dir=str(target)) as writer:
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                step = r["round"]
                for site, metrics in r.get("val", {}).items():
                    for key, value in metrics.items():
                        if isinstance(value, (int, float)) and key != "n":
                            writer.add_scalar(f"val_{key}/{site}", value, step)
                for site, loss in r.get("train_loss", {}).items():
                    if loss is not None:
                        writer.add_scalar(f"train_loss/{site}", loss, step)
                writer.add_scalar("traffic/bytes_up", r.get("bytes_up", 0), step)
                writer.add_scalar("traffic/bytes_down", r.get("bytes_down", 0), step)
                writer.add_scalar("time/seconds_per_round", r.get("seconds", 0.0), step)
        written.append(target)
    return written
