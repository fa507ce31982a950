"""Compressed updates: what a site sends is its *change* to the model it was sent, made smaller.

    q8       8-bit stochastic quantization, one scale per float tensor (QSGD, Alistarh et al.
             2017, with s = 127 levels and the max-norm): q = floor(u / s + U[0, 1)), s = max|u|/127,
             so E[q s] = u (unbiased) and |u - q s| < s. About 4x smaller than float32.
    topk:F   top-k sparsification with error feedback (Stich, Cordonnier & Jaggi 2018, "Sparsified
             SGD with memory"; Karimireddy et al. 2019, "Error feedback fixes SignSGD", EF-SGD):
                 p = u + e;   sent = top_k(p);   e <- p - sent
             the site keeps the residual e it did not send and adds it to its next update, so every
             coordinate is sent eventually; plain top-k loses the small ones for ever.

k is taken over the *whole* update (all float tensors flattened together), not per tensor: the
error-feedback analysis is for one contraction operator on the full vector (||p - top_k(p)||^2 <=
(1 - k/d) ||p||^2), the message is two tensors (indices, values) whatever the model's depth, and a
layer whose changes are small is not forced to spend its share; error feedback still delivers its
changes once they have accumulated.

Integer buffers (BatchNorm's num_batches_tracked) travel as they are. The site side is a LocalSite
wrapper (CompressedSite), the server side a strategy wrapper (Compressed) whose update_template says
what a compressed reply must look like and whose decode_update turns it back into a model before
the round loop checks it again and the strategy (FedAvg, a robust aggregator) sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from medfed.algorithms.checkpoint import Checkpoint
from medfed.algorithms.compression_spec import NONE, Q8, CompressionSpec
from medfed.algorithms.strategy import Strategy
from medfed.client.trainer import LocalSite, TrainOptions
from medfed.errors import IncompatibleUpdate
from medfed.types import Metrics, Prediction, SiteId, StateDict, Update

PREFIX = "medfed.compress/"  # message keys that are not model keys
SCALES, INDICES, VALUES = PREFIX + "scales", PREFIX + "indices", PREFIX + "values"
LEVELS = 127  # int8 codes in [-127, 127]: symmetric, so -u quantizes like u


# --- the mathematics: pure functions on tensors ----------------------------------------------------

def quantize(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """x -> (int8 codes, scale) with stochastic rounding: E[codes * scale] = x."""
    x = x.to(torch.float64)
    amax = float(x.abs().max()) if x.numel() else 0.0
    if amax == 0.0:
        return torch.zeros(x.shape, dtype=torch.int8), 0.0
    scale = amax / LEVELS
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    codes = torch.floor(x / scale + noise).clamp(-LEVELS, LEVELS)  # |x / scale| <= 127
    return codes.to(torch.int8), scale


def dequantize(codes: torch.Tensor, scale: float) -> torch.Tensor:
    return codes.to(torch.float64) * scale


def top_k(vector: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of the k largest entries of |vector|."""
    indices = torch.topk(vector.abs(), k, sorted=False).indices
    return indices, vector[indices]


def k_for(spec: CompressionSpec, d: int) -> int:
    return min(d, max(1, round(spec.fraction * d))) if d else 0


def float_keys(sent: StateDict) -> list[str]:
    """The tensors that are compressed, in an order both ends agree on (a decoded safetensors
    message need not keep the order the state was made in)."""
    return sorted(k for k, v in sent.items() if v.is_floating_point())


def flatten(state: StateDict, keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).to(torch.float32) for k in keys]) if keys \
        else torch.zeros(0)


def _index_dtype(d: int) -> torch.dtype:
    return torch.int32 if d < 2 ** 31 else torch.int64


# --- messages: the safetensors dict a site sends, and back -----------------------------------------

def encode_q8(change: StateDict, ints: StateDict, generator: torch.Generator) -> StateDict:
    keys = sorted(change)
    message, scales = dict(ints), []
    for k in keys:
        message[k], scale = quantize(change[k], generator)
        scales.append(scale)
    message[SCALES] = torch.tensor(scales, dtype=torch.float32)
    return message


def encode_topk(vector: torch.Tensor, k: int, ints: StateDict) -> StateDict:
    indices, values = top_k(vector, k)
    return {**ints, INDICES: indices.to(_index_dtype(vector.numel())), VALUES: values}


def template(spec: CompressionSpec, sent: StateDict) -> StateDict:
    """What a compressed reply to `sent` looks like (keys, shapes, dtypes): the round loop checks
    it before decoding. Tensors on the meta device: no memory, only the layout."""
    keys = float_keys(sent)
    meta = {k: v for k, v in sent.items() if k not in keys}
    if spec.kind == Q8:
        meta |= {k: torch.empty(sent[k].shape, dtype=torch.int8, device="meta") for k in keys}
        meta[SCALES] = torch.empty(len(keys), dtype=torch.float32, device="meta")
        return meta
    d = sum(sent[k].numel() for k in keys)
    k = k_for(spec, d)
    meta[INDICES] = torch.empty(k, dtype=_index_dtype(d), device="meta")
    meta[VALUES] = torch.empty(k, dtype=torch.float32, device="meta")
    return meta


def decode(spec: CompressionSpec, message: StateDict, sent: StateDict) -> StateDict:
    """A checked compressed reply -> the site's model: sent + the decoded change."""
    keys = float_keys(sent)
    state = {k: v for k, v in message.items() if not k.startswith(PREFIX) and k not in keys}
    if spec.kind == Q8:
        scales = message[SCALES].to(torch.float64)
        change = {k: dequantize(message[k], float(s)) for k, s in zip(keys, scales)}
    else:
        change = _scatter(message[INDICES], message[VALUES], sent, keys)
    for k in keys:
        state[k] = (sent[k].to(torch.float64) + change[k]).to(sent[k].dtype)
    return state


def _scatter(indices: torch.Tensor, values: torch.Tensor, sent: StateDict,
             keys: list[str]) -> StateDict:
    d = sum(sent[k].numel() for k in keys)
    indices = indices.to(torch.int64)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= d):
        raise IncompatibleUpdate(f"top-k indices outside the model's {d} coordinates")
    if torch.unique(indices).numel() != indices.numel():
        raise IncompatibleUpdate("top-k indices repeat a coordinate")
    dense = torch.zeros(d, dtype=torch.float64)
    dense[indices] = values.to(torch.float64)
    change, start = {}, 0
    for k in keys:
        n = sent[k].numel()
        change[k] = dense[start:start + n].reshape(sent[k].shape)
        start += n
    return change


# --- the site: compresses what it sends, keeps top-k's residual -----------------------------------

class CompressedSite:
    """Wraps a site (SiteTrainer, DPSite: compression is post-processing of a DP update, so it
    keeps DP-SGD's guarantee). seed: the stochastic rounding's stream (None: OS entropy)."""

    def __init__(self, trainer: LocalSite, spec: CompressionSpec, seed: int | None) -> None:
        self.trainer = trainer
        self.spec = spec
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.residual: torch.Tensor | None = None  # error feedback: what top-k has not sent yet

    @property
    def site(self) -> str:
        return self.trainer.site

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        update = self.trainer.train(state, options)
        return replace(update, state=self.compress(update.state, state))

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.trainer.evaluate(state, split)

    def compress(self, trained: StateDict, sent: StateDict) -> StateDict:
        keys = float_keys(sent)
        ints = {k: v for k, v in trained.items() if k not in keys}
        if self.spec.kind == Q8:
            change = {k: trained[k].to(torch.float64) - sent[k].to(torch.float64) for k in keys}
            return encode_q8(change, ints, self.generator)
        vector = flatten(trained, keys) - flatten(sent, keys)
        if self.residual is not None and self.residual.shape == vector.shape:
            vector = vector + self.residual  # EF-SGD: p = u + e
        message = encode_topk(vector, k_for(self.spec, vector.numel()), ints)
        self.residual = vector.index_fill(0, message[INDICES].to(torch.int64), 0.0)  # e = p - sent
        return message


def compress_sites(trainers: dict[SiteId, LocalSite], spec: CompressionSpec, seed: int,
                   first_index: int = 0, deployed: bool = False) -> dict[SiteId, LocalSite]:
    """Each site wrapped in CompressedSite (outermost: what leaves the site is compressed last).
    first_index: a deployed client wraps only its own site at its place in the federation."""
    if spec.kind == NONE:
        return trainers
    return {site: CompressedSite(trainer, spec, None if deployed else int(
                np.random.SeedSequence([seed, 7, k]).generate_state(1)[0]))
            for k, (site, trainer) in enumerate(trainers.items(), start=first_index)}


# --- the server: decompresses before the update check and the aggregator --------------------------

class Compressed:
    """Wraps any strategy: replies are compressed (update_template), decode_update makes them
    models again; everything else is the wrapped strategy's."""

    def __init__(self, inner: Strategy, spec: CompressionSpec) -> None:
        self.inner = inner
        self.spec = spec
        self.compression = str(spec)  # each round's record says which compression it used
        self.name = inner.name
        self.prediction: Prediction = inner.prediction
        self.train_overrides = inner.train_overrides

    @property
    def aggregation_notes(self) -> dict[str, list[SiteId]]:
        return self.inner.aggregation_notes

    def update_template(self, sent: StateDict) -> StateDict:
        return template(self.spec, sent)

    def decode_update(self, update: Update, sent: StateDict) -> Update:
        return replace(update, state=decode(self.spec, update.state, sent))

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        return self.inner.stages(round_index, sites)

    def payload(self, site: SiteId) -> StateDict:
        return self.inner.payload(site)

    def open_stage(self) -> None:
        self.inner.open_stage()

    def receive(self, update: Update) -> None:
        self.inner.receive(update)

    def close_stage(self) -> None:
        self.inner.close_stage()

    def site_state(self, site: SiteId) -> StateDict:
        return self.inner.site_state(site)

    @property
    def global_state(self) -> StateDict:
        return self.inner.global_state

    @property
    def trained_sites(self) -> list[SiteId]:
        return self.inner.trained_sites

    def checkpoint(self) -> Checkpoint:
        return self.inner.checkpoint()

    def restore(self, checkpoint: Checkpoint) -> None:
        self.inner.restore(checkpoint)


def compress_strategy(strategy: Strategy, spec: CompressionSpec) -> Strategy:
    return strategy if spec.kind == NONE else Compressed(strategy, spec)
