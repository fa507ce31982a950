"""The run checkpointer (run_state.RunCheckpointer) writes every round so far after each round, but
encodes each round once: re-encoding all earlier rounds after every round cost rounds^2 x sites
Python calls (69 million over 20 rounds of 500 scored sites). Hand mutation that makes the first
test fail: build the lines from every round again in round_finished."""

from __future__ import annotations

import json

import torch

from medfed import output
from medfed.algorithms.checkpoint import from_bytes
from medfed.algorithms.fedavg import FedAvg
from medfed.run_state import CHECKPOINT, RunCheckpointer, load_resume
from medfed.server.round_loop import RoundResult


def result(r: int) -> RoundResult:
    sites = [f"s{k}" for k in range(3)]
    return RoundResult(round=r, sites=sites, train_loss={s: 0.5 for s in sites},
                       val={s: {"auc": float("nan"), "loss": 0.7} for s in sites})


def test_each_round_is_encoded_once(tmp_path, monkeypatch):
    encoded = []
    record = output.round_record
    monkeypatch.setattr(output, "round_record", lambda r: encoded.append(r.round) or record(r))
    checkpointer = RunCheckpointer(tmp_path, None, FedAvg({"w": torch.zeros(4)}), [result(0)], None)
    for r in range(1, 6):
        checkpointer.round_finished(result(r))
    assert encoded == list(range(6))


def test_rounds_jsonl_and_the_checkpoint_hold_every_round(tmp_path):
    checkpointer = RunCheckpointer(tmp_path, None, FedAvg({"w": torch.zeros(4)}), [], None)
    history = [result(r) for r in range(4)]
    for r in history:
        checkpointer.round_finished(r)
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [output.round_record(r) for r in history]
    _, meta = from_bytes((tmp_path / CHECKPOINT).read_bytes())
    assert meta["history"] == [output.round_record(r) for r in history]
    assert load_resume(tmp_path).rounds_done == 4
