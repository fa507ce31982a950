"""How the pooled baseline was trained, as summary.json and compare.json record it and as tables
name it: "pooled" (single-process) or "pooled (multi-node x2)" (DistributedDataParallel over two
workers, pooled_ddp.py). Plain data, so reading a finished run (`medfed report`) loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SINGLE_PROCESS = "single-process"
MULTI_NODE = "multi-node"


@dataclass(frozen=True)
class PooledExecution:
    workers: int = 1
    backend: str | None = None  # torch.distributed's: gloo or nccl; None in a single process
    startup_seconds: float = 0.0  # from spawning the workers until all had joined the group
    worker_startup_seconds: tuple[float, ...] = field(default_factory=tuple)  # each worker's

    @property
    def training(self) -> str:
        return MULTI_NODE if self.workers > 1 else SINGLE_PROCESS

    def record(self, wall_seconds: float) -> dict[str, Any]:
        """wall_seconds: the pooled baseline's, the workers' start-up included."""
        return {"training": self.training, "workers": self.workers, "backend": self.backend,
                "wall_seconds": wall_seconds, "startup_seconds": self.startup_seconds,
                "worker_startup_seconds": list(self.worker_startup_seconds)}


def pooled_label(record: dict[str, Any] | None) -> str:
    """The pooled model's row name, from its record (None or an older run's: single-process)."""
    record = record or {}
    return workers_label(record.get("workers", 1) if record.get("training") == MULTI_NODE else 1)


def workers_label(workers: int) -> str:
    return f"pooled (multi-node x{workers})" if workers > 1 else "pooled"


def over_seeds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """compare.json's configurations.pooled record: how it ran, its seconds the mean over seeds
    (each seed's own record is in its per_seed entry)."""
    first = records[0]
    return {"training": first["training"], "workers": first["workers"],
            "backend": first["backend"], "wall_seconds": _mean(records, "wall_seconds"),
            "startup_seconds": _mean(records, "startup_seconds")}


def _mean(records: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in records) / len(records)
