"""Compressed updates (medfed/algorithms/compression.py): q8's stochastic rounding and top-k with
error feedback, the messages, and whole runs.

Hand mutations these tests catch:
- round to nearest instead of stochastically (quantize: torch.round) -> test_stochastic_rounding_is_unbiased
- drop the error feedback (CompressedSite.compress: never add the residual) -> test_error_feedback_converges...
- keep the sent coordinates in the residual (no index_fill) -> test_error_feedback_converges...
- decode without the indices' range check -> test_bad_indices_are_a_failed_site, ..._refused
- decode in receive() outside the round loop's try -> test_bad_indices_are_a_failed_site
- leave the sites unwrapped (experiment.py without compress_sites) -> test_run_sends_fewer_bytes
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medfed.algorithms.compression import (
    INDICES,
    SCALES,
    VALUES,
    Compressed,
    CompressedSite,
    compress_strategy,
    decode,
    dequantize,
    quantize,
    template,
)
from medfed.algorithms.compression_spec import parse_compression
from medfed.algorithms.registry import StrategyContext, build_strategy
from medfed.cli import main
from medfed.client.trainer import TrainOptions
from medfed.config import FederationConfig, PrivacyConfig, RunConfig
from medfed.errors import ConfigError, IncompatibleUpdate
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.server.validation import check_update
from medfed.transport.inprocess import InProcessTransport
from medfed.types import Metrics, StateDict, Update

Q8, TOPK = parse_compression("q8"), parse_compression("topk:0.1")


@pytest.mark.parametrize("seed", range(5))
def test_quantized_update_round_trips_within_its_step(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, generator=g) * 10 ** (seed - 2)
    codes, scale = quantize(x, g)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 127
    assert float((x.double() - dequantize(codes, scale)).abs().max()) <= scale


def test_zero_update_quantizes_to_zero() -> None:
    codes, scale = quantize(torch.zeros(7), torch.Generator())
    assert scale == 0.0 and not codes.any()


def test_stochastic_rounding_is_unbiased() -> None:
    # 0.3 of a step above a grid point: rounding to nearest would be 0.3 * scale off everywhere.
    x = torch.tensor([127.0, -127.0] + [k + 0.3 for k in range(-60, 60)], dtype=torch.float64)
    g, draws = torch.Generator().manual_seed(1), 4000
    mean = sum(dequantize(*quantize(x, g)) for _ in range(draws)) / draws  # scale is 1 here
    assert float((mean - x).abs().max()) < 5 * 0.5 / draws ** 0.5


class LeastSquares:
    """A site whose update is one gradient step on its own least-squares problem."""

    def __init__(self, name: str, a: torch.Tensor, b: torch.Tensor, lr: float = 0.05) -> None:
        self.name, self.a, self.b, self.lr = name, a, b, lr

    @property
    def site(self) -> str:
        return self.name

    def train(self, state: StateDict, options: object) -> Update:
        w = state["w"] - self.lr * self.a.T @ (self.a @ state["w"] - self.b)
        return Update(self.name, {"w": w}, 1, 1)

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return {}


def _federated_top_k(feedback: bool, rounds: int = 300, d: int = 20, n: int = 5) -> float:
    """Relative distance to the pooled least-squares optimum after `rounds` of top-10% updates."""
    g = torch.Generator().manual_seed(0)
    truth, sites = torch.randn(d, generator=g), []
    for k in range(n):  # heterogeneous sites: each its own noise
        a = torch.randn(200, d, generator=g) / 200 ** 0.5
        sites.append(LeastSquares(f"s{k}", a, a @ truth + torch.randn(200, generator=g)))
    a, b = torch.cat([s.a for s in sites]), torch.cat([s.b for s in sites])
    best = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    wrapped = [CompressedSite(s, TOPK, seed=0) for s in sites]
    w = torch.zeros(d)
    for _ in range(rounds):
        sent = {"w": w}
        states = []
        for site in wrapped:
            if not feedback:
                site.residual = None  # plain top-k: what was not sent is lost
            states.append(decode(TOPK, site.train(sent, None).state, sent)["w"])
        w = torch.stack(states).mean(0)
    return float((w - best).norm() / best.norm())


def test_error_feedback_converges_where_plain_top_k_does_not() -> None:
    with_feedback, plain = _federated_top_k(True), _federated_top_k(False)
    assert with_feedback < 0.1
    assert plain > 3 * with_feedback


def _model() -> StateDict:
    g = torch.Generator().manual_seed(3)
    return {"conv.weight": torch.randn(4, 3, 3, generator=g), "bn.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(5)}


class Nudge:
    """A site that moves every float tensor by a fixed amount and counts its batches."""

    site = "a"

    def train(self, state: StateDict, options: object) -> Update:
        out = {k: v + 0.01 * torch.arange(v.numel()).reshape(v.shape) if v.is_floating_point()
               else v + 2 for k, v in state.items()}
        return Update("a", out, 10, 1)

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return {}


@pytest.mark.parametrize("spec", [Q8, TOPK, parse_compression("topk:0.5")])
def test_message_matches_template_and_decodes_to_a_model(spec) -> None:
    sent = _model()
    update = CompressedSite(Nudge(), spec, seed=0).train(sent, None)
    check_update(update, template(spec, sent))  # the server's first check
    decoded = Compressed(_Stub(), spec).decode_update(update, sent)
    check_update(decoded, sent)  # and its second
    assert int(decoded.state["bn.num_batches_tracked"]) == 7  # integer buffers travel as they are
    if spec.kind == "q8":
        assert update.state["conv.weight"].dtype == torch.int8 and update.state[SCALES].shape == (2,)
    else:
        assert update.state[INDICES].dtype == torch.int32
        assert update.state[VALUES].numel() == round(spec.fraction * 40)


class _Stub:
    name, prediction, train_overrides, aggregation_notes = "fedavg", "global", {}, {}


def test_bad_indices_are_refused() -> None:
    sent = _model()
    update = CompressedSite(Nudge(), TOPK, seed=0).train(sent, None)
    for bad in (torch.full_like(update.state[INDICES], 40), torch.zeros_like(update.state[INDICES])):
        with pytest.raises(IncompatibleUpdate):
            decode(TOPK, {**update.state, INDICES: bad}, sent)


class OutOfRange(CompressedSite):
    """A site whose top-k indices point outside the model."""

    def compress(self, trained: StateDict, sent: StateDict) -> StateDict:
        message = super().compress(trained, sent)
        return {**message, INDICES: torch.full_like(message[INDICES], 10 ** 6)}


@pytest.mark.parametrize("aggregator", ["mean", "median"])
def test_bad_indices_are_a_failed_site(aggregator: str) -> None:
    """Through the round loop and the in-process transport: the honest sites' decoded updates are
    aggregated (FedAvg, or a robust rule), the bad one is recorded and left out."""
    sites = {"a": OutOfRange(Nudge(), TOPK, 0), "b": CompressedSite(Nudge(), TOPK, 1),
             "c": CompressedSite(Nudge(), TOPK, 2)}
    initial = _model()
    ctx = StrategyContext(initial, frozenset(initial), frozenset(), list(sites),
                          FederationConfig(aggregator=aggregator, byzantine=0))
    strategy = compress_strategy(build_strategy("fedavg", ctx), TOPK)
    transport = InProcessTransport(sites)
    [result] = run_rounds(strategy, transport, list(sites), RoundPlan(1, eval_every=0),
                          TrainOptions(), np.random.default_rng(0))
    assert "outside" in result.failed["a"] and result.sites == ["b", "c"]
    assert result.compression == "topk:0.1" and set(result.update_norm) == {"b", "c"}
    assert not torch.equal(strategy.global_state["conv.weight"], initial["conv.weight"])


@pytest.mark.parametrize("text", ["zip", "topk", "topk:0", "topk:1", "topk:-0.1", "q4", "topk:x"])
def test_bad_compress_values_name_the_valid_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="none, q8 or topk:F"):
        FederationConfig(compress=text)


@pytest.mark.parametrize("text", ["q8", "topk:0.1"])
def test_refused_with_secure_aggregation(text: str) -> None:
    with pytest.raises(ConfigError, match="refused with secure aggregation"):
        RunConfig(federation=FederationConfig(compress=text),
                  privacy=PrivacyConfig(secure_aggregation=True))


def test_bad_compress_flag_is_one_line_and_exit_2(capsys) -> None:
    try:
        code = main(["run", "--compress", "topk:2"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none, q8 or topk:F" in err[0]


TINY = """\
device = "cpu"
baselines = false
[data]
sites = 3
synthetic_samples = 120
synthetic_test = 60
augment = false
[federation]
rounds = 2
eval_every = 0
"""


def test_run_sends_fewer_bytes(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    summaries = {}
    for compress in ("none", "q8", "topk:0.1"):
        out = tmp_path / compress.replace(":", "-")
        try:
            code = main(["run", "--config", str(config), "--compress", compress, "--out", str(out)])
        except SystemExit as exc:
            code = exc.code
        assert code in (0, None), capsys.readouterr().err
        summaries[compress] = json.loads((out / "summary.json").read_text())
        rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
        assert {r["compression"] for r in rounds} == {compress}
        assert all(len(r["sites"]) == 3 and r["update_norm"] for r in rounds)
    up = {c: s["bytes_up"] for c, s in summaries.items()}
    assert up["q8"] < 0.3 * up["none"] and up["topk:0.1"] < 0.3 * up["none"]
    assert summaries["q8"]["bytes_down"] == summaries["none"]["bytes_down"]
