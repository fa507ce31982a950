"""The state store: a completed round is recorded once with its checkpoint; a reopened store
finds the last completed round's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medfed.deploy.state import StateStore
from medfed.errors import ConfigError
from medfed.server.round_loop import RoundResult


def test_rounds_are_recorded_once_and_the_last_checkpoint_reloads(tmp_path: Path):
    store = StateStore(tmp_path)
    for r in range(3):
        result = RoundResult(round=r, sites=["site-a"], val={"site-a": {"auc": 0.5 + r / 10}})
        digest = store.record_round(result, {"w": torch.full((2,), float(r))}, {"algorithm": "fedavg"})
        assert len(digest) == 64
    with pytest.raises(ConfigError, match="already recorded"):
        store.record_round(RoundResult(round=2), {"w": torch.zeros(2)}, {})
    store.close()

    reopened = StateStore(tmp_path)
    assert reopened.completed_rounds() == 3
    last, state = reopened.last_checkpoint()
    assert last == 2 and torch.equal(state["w"], torch.full((2,), 2.0))
    assert [h["round"] for h in reopened.history()] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-00002.safetensors", "round-00003.safetensors"]
    reopened.close()


def test_sites_and_settings_persist(tmp_path: Path):
    store = StateStore(tmp_path)
    store.record_site("site-a", {"n_train": 40})
    store.record_site("site-a")
    store.put("config_sha256", "abc")
    store.close()
    reopened = StateStore(tmp_path)
    assert reopened.site_info() == {"site-a": {"n_train": 40}}
    assert reopened.get("config_sha256") == "abc" and reopened.get("missing") is None
    reopened.close()
