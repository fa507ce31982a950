"""The one place that parses and checks what a site sends back, on every task kind.

A site's Result header (JSON metadata, announced size) is checked when it arrives
(`parse_meta`, `check_size`); the finished Reply is then read with the reader of its kind:
`update_of` (train: the model, the sample and step counts, metrics, against the sample bounds and
the replay ledger), `metrics_of` (evaluate), or the caller's own parser of a JSON answer (final,
secagg.*), which receives only a JSON object of bounded size. Everything wrong raises BadReply
(errors.py), which every caller records as that site's failure.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from medfed.errors import BadReply, IncompatibleUpdate
from medfed.transport.codec import decode_state
from medfed.types import Metrics, SiteId, Update

META_LIMIT = 1 << 20  # characters of a Result's JSON metadata (a final evaluation is ~10 KB)
MAX_STEPS = 10**9  # local steps a site may report (FedNova weighs by them)
MAX_METRICS = 256  # metrics in one answer
DEFAULT_SAMPLE_CAP = 10**7  # [deployment] max_samples_per_site


def parse_meta(text: str) -> dict[str, Any]:
    """A Result's metadata: a JSON object of at most META_LIMIT characters."""
    if len(text) > META_LIMIT:
        raise BadReply(f"metadata of {len(text)} characters, over the limit of {META_LIMIT}")
    try:
        meta = json.loads(text or "{}")
    except (ValueError, RecursionError) as exc:
        raise BadReply(f"malformed metadata: {str(exc)[:100]}") from None
    if not isinstance(meta, dict):
        raise BadReply(f"malformed metadata: a JSON {type(meta).__name__}, not an object")
    return meta


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise BadReply(f"announced {size} bytes, over the limit of {limit} bytes")


@dataclass(frozen=True)
class SampleBounds:
    """What a site's sample count may be: at least 1, at most the federation's cap and at most the
    training size the site declared in its hello (when its policy let it declare one)."""

    cap: int = DEFAULT_SAMPLE_CAP

    def check(self, value: Any, declared: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadReply(f"sample count must be a positive integer, got {str(value)[:40]}")
        if value > self.cap:
            raise BadReply(f"sample count {str(value)[:40]} is over the federation's cap "
                           f"max_samples_per_site = {self.cap}")
        if isinstance(declared, int) and not isinstance(declared, bool) and value > declared:
            raise BadReply(f"sample count {value} is over the {declared} training samples the "
                           "site declared when it joined")
        return value


class ReplayLedger:
    """SHA-256 of every update received: the same bytes from another site, or in another round,
    are a replay. A store (deploy/state.py) keeps them across a resumed server."""

    def __init__(self, store: Any = None) -> None:
        self.store = store
        self._seen: dict[str, tuple[SiteId, int]] = dict(store.update_digests()) if store else {}

    def admit(self, digest: str, site: SiteId, round_number: int) -> None:
        first = self._seen.get(digest)
        if first is not None and first != (site, round_number):  # a site's own resend is no replay
            raise BadReply(f"replayed update: byte-identical to the update of {first[0]} in round "
                           f"{first[1]}")
        if first is None:
            self._seen[digest] = (site, round_number)
            if self.store is not None:
                self.store.record_update_digest(digest, site, round_number)


def digest_of(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def update_of(site: SiteId, meta: dict[str, Any], blob: bytes, n_samples: int) -> Update:
    """A train answer as an Update; n_samples already checked (SampleBounds)."""
    try:
        state = decode_state(blob)
    except IncompatibleUpdate as exc:
        raise BadReply(f"malformed update: {exc}") from None
    return Update(site=site, state=state, n_samples=n_samples, n_steps=steps_of(meta.get("n_steps", 0)),
                  metrics=metrics_of(meta.get("metrics")))


def steps_of(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEPS:
        raise BadReply(f"step count must be an integer in [0, {MAX_STEPS}], got {str(value)[:40]}")
    return value


def metrics_of(value: Any) -> Metrics:
    """Metrics: a JSON object of at most MAX_METRICS numbers; a value that is no finite number
    becomes NaN (shown as missing), never an exception."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise BadReply(f"metrics must be a JSON object of at most {MAX_METRICS} numbers")
    return {str(k)[:64]: _number(v) for k, v in value.items()}


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double
        return float("nan")
    return number if math.isfinite(number) else float("nan")
