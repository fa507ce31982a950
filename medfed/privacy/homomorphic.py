"""Homomorphic aggregation in the round loop (CKKS, ckks.py): a site wrapper that encrypts its
weighted change, a strategy wrapper that adds ciphertexts and never decrypts, and the Decryptor
that asks the sites to decrypt the sum.

    site k:  c_k = Enc([n_k (x_k - x) over the encrypted layers, n_k])      (HomomorphicSite.train)
    server:  C = sum_k c_k                                                   (HomomorphicAggregation)
    sites:   Dec(C) = [sum_k n_k (x_k - x), sum_k n_k]  ->  the mean change  (HomomorphicSite.decrypt)
    server:  x <- x + mean change, handed to the wrapped FedAvg / FedProx as the round's one update

What travels as a site's update: its ciphertexts as uint8 tensors under CIPHERTEXT_PREFIX (one per
4096 values, TenSEAL's serialization inside a safetensors message), plus the layers it does not
encrypt. With every float layer encrypted, nothing else leaves the site: integer buffers come back
as they were sent, the count is the constant 1, no step count, no metrics (each would give the
server the site's size), as with secure aggregation. With --encrypt-layers, the other layers travel
in the clear as in plain FedAvg, with the site's sample count, and are averaged by it.

Who learns what: the server sees ciphertexts and, once the sites have decrypted it, the round's
mean change (the new global model it distributes); never one site's change. The decrypting sites
see the sum too. Against a server that follows the protocol (honest-but-curious) that is the whole
story; a malicious server could instead send one site's ciphertext for "decryption". A site limits
that to one request per round it took part in, and every site of the round is asked and must agree,
but it cannot tell a sum from a single update: against a malicious server, secure aggregation
(signed survivor sets) is the mechanism (the README says so).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from medfed.algorithms.aggregate import WeightedMean
from medfed.client.trainer import LocalSite, TrainOptions
from medfed.errors import ConfigError, IncompatibleUpdate, MedfedError
from medfed.privacy import ckks
from medfed.privacy.hidden_sum import HiddenSum
from medfed.server.validation import check_update
from medfed.types import Metrics, SiteId, StateDict, Update

CIPHERTEXT_PREFIX = "medfed.he/"
AGREEMENT = 1e-6  # how far two sites' decryptions of one sum may differ (CKKS error is ~1e-9)


class HomomorphicError(MedfedError):
    """The round's sum could not be decrypted (nobody answered, or the answers disagree)."""


def ciphertext_key(i: int) -> str:
    return f"{CIPHERTEXT_PREFIX}{i:05d}"


def encrypted_keys(reference: StateDict, patterns: Sequence[str]) -> list[str]:
    """The float tensors that are encrypted, sorted (both ends agree on the order): all of them,
    or those whose name matches one of the glob patterns."""
    floats = sorted(k for k, v in reference.items() if v.is_floating_point())
    if not patterns:
        return floats
    chosen = [k for k in floats if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    if not chosen:
        raise ConfigError(f"--encrypt-layers {','.join(patterns)} matches no layer of the model; "
                          f"its layers are {', '.join(floats[:12])}{' ...' if len(floats) > 12 else ''}")
    return chosen


def describe(patterns: Sequence[str]) -> str:
    """Each round's record of its protection."""
    return "homomorphic:" + (",".join(patterns) if patterns else "all")


def _flatten(state: StateDict, keys: Sequence[str]) -> np.ndarray:
    return np.concatenate([state[k].detach().reshape(-1).to(torch.float64).numpy() for k in keys]) \
        if keys else np.zeros(0)


def ciphertexts_of(state: StateDict) -> list[bytes]:
    return [state[k].numpy().tobytes() for k in sorted(state) if k.startswith(CIPHERTEXT_PREFIX)]


def as_state(blobs: Sequence[bytes]) -> StateDict:
    """Ciphertexts as the uint8 tensors of a safetensors message."""
    return {ciphertext_key(i): torch.frombuffer(bytearray(b), dtype=torch.uint8)
            for i, b in enumerate(blobs)}


class HomomorphicSite:
    """A site (any LocalSite; DP-SGD inside it is untouched) that sends its weighted change
    encrypted, and decrypts the round's sum. context: the federation's secret context."""

    def __init__(self, trainer: LocalSite, secret_context: bytes, patterns: Sequence[str] = ()) -> None:
        self.trainer = trainer
        self.context = ckks.load(secret_context, private=True)
        self.patterns = tuple(patterns)
        self._open: tuple[int, int] | None = None  # (round, length) of the sum it will decrypt, once

    @property
    def site(self) -> str:
        return self.trainer.site

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        honest = self.trainer.train(state, options)
        keys = encrypted_keys(state, self.patterns)
        weight = honest.n_samples
        change = _flatten(honest.state, keys) - _flatten(state, keys)
        blobs = ckks.encrypt(self.context, np.concatenate([weight * change, [float(weight)]]))
        self._open = (options.round, len(change) + 1)
        if len(keys) == sum(v.is_floating_point() for v in state.values()):  # nothing in clear
            ints = {k: v for k, v in state.items() if not v.is_floating_point()}
            return Update(self.site, ints | as_state(blobs), n_samples=1, n_steps=0)
        plain = {k: v for k, v in honest.state.items() if k not in keys}
        return Update(self.site, plain | as_state(blobs), honest.n_samples, honest.n_steps,
                      dict(honest.metrics))

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.trainer.evaluate(state, split)

    def decrypt(self, summed: Sequence[bytes], length: int, round_index: int) -> np.ndarray:
        """The mean change sum_k n_k (x_k - x) / sum_k n_k of a round this site sent to, of the
        length it sent; once."""
        if self._open != (round_index, length):
            raise HomomorphicError(f"site {self.site} decrypts only the sum of a round it sent "
                                   f"ciphertexts to, once, of the length it sent (asked for round "
                                   f"{round_index + 1}, {length} values)")
        self._open = None
        values = ckks.decrypt(self.context, list(summed), length)
        weight = round(float(values[-1]))
        if weight < 1:
            raise HomomorphicError(f"site {self.site}: the decrypted total weight is {values[-1]:.3g}")
        return values[:-1] / weight


class Decryptor(Protocol):
    """Carries the summed ciphertexts to the round's sites and their decryptions back: in process
    (InProcessDecryptor) or over gRPC (deploy/homomorphic_exchange.py)."""

    def decrypt(self, summed: list[bytes], length: int, sites: list[SiteId],
                round_index: int) -> np.ndarray: ...


def agreed(answers: dict[SiteId, np.ndarray], length: int) -> np.ndarray:
    """The mean change the answering sites agree on; a single site cannot slip in another model."""
    good = {s: a for s, a in answers.items() if a.shape == (length - 1,) and np.isfinite(a).all()}
    if not good:
        raise HomomorphicError(f"no site returned a usable decryption of the round's sum "
                               f"(asked: {', '.join(answers) or 'none answered'})")
    first, reference = next(iter(good.items()))
    odd = [s for s, a in good.items() if np.abs(a - reference).max(initial=0.0) > AGREEMENT]
    if odd or len(good) < len(answers):
        bad = sorted(odd + [s for s in answers if s not in good])
        raise HomomorphicError(f"the sites' decryptions of the round's sum disagree ({first} "
                               f"against {', '.join(bad)}); the round is not applied")
    return reference


class InProcessDecryptor:
    """The Decryptor of a simulation: each site of the round decrypts, as deployed sites do.
    counter: the transport, whose byte counts then include this exchange as a network's would."""

    def __init__(self, sites: dict[SiteId, HomomorphicSite], counter: Any = None) -> None:
        self.sites = sites
        self.counter = counter

    def decrypt(self, summed: list[bytes], length: int, sites: list[SiteId],
                round_index: int) -> np.ndarray:
        answers = {s: self.sites[s].decrypt(summed, length, round_index) for s in sites}
        if self.counter is not None:
            self.counter.bytes_down += len(sites) * sum(map(len, summed))
            self.counter.bytes_up += sum(8 * a.size for a in answers.values())
        return agreed(answers, length)


class HomomorphicAggregation(HiddenSum):
    """Wraps FedAvg or FedProx: receives ciphertexts, adds them, hands the wrapped strategy only
    the mean the sites decrypted. public_context: the server's context (no secret key)."""

    def __init__(self, inner: Any, public_context: bytes, decryptor: Decryptor,
                 patterns: Sequence[str] = ()) -> None:
        super().__init__(inner, fact="homomorphic_trained")
        self.context = ckks.load(public_context, private=False)
        self.decryptor = decryptor
        self.patterns = tuple(patterns)
        self.protection = describe(self.patterns)
        self.keys = encrypted_keys(inner.global_state, self.patterns)  # a bad pattern fails now
        self._round = 0
        self._parsed: dict[SiteId, list[Any]] = {}

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        self._round = round_index
        return self.inner.stages(round_index, sites)

    def open_stage(self) -> None:
        self.keys = encrypted_keys(self.inner.global_state, self.patterns)
        self.length = sum(self.inner.global_state[k].numel() for k in self.keys) + 1  # + weight
        self._sum: list[Any] | None = None
        self._plain = WeightedMean()
        self._delivered: list[SiteId] = []
        self._parsed.clear()

    def reply_bytes(self, sent: StateDict) -> int:
        """The most a site's reply to `sent` may weigh (the gRPC transport's limit on it)."""
        keys = encrypted_keys(sent, self.patterns)
        length = sum(sent[k].numel() for k in keys) + 1
        plain = sum(v.numel() * v.element_size() for k, v in sent.items() if k not in keys)
        return plain + len(ckks.chunk_lengths(length)) * ckks.CIPHERTEXT_BYTES

    def check_reply(self, update: Update, sent: StateDict) -> Update:
        """The clear part against the model sent, the ciphertexts against the public context (count,
        lengths, sizes, scale): what does not fit is that site's IncompatibleUpdate."""
        clear = {k: v for k, v in update.state.items() if not k.startswith(CIPHERTEXT_PREFIX)}
        check_update(Update(update.site, clear, update.n_samples, update.n_steps),
                     {k: v for k, v in sent.items() if k not in self.keys})
        cipher = {k: v for k, v in update.state.items() if k.startswith(CIPHERTEXT_PREFIX)}
        count = len(ckks.chunk_lengths(self.length))
        if sorted(cipher) != [ciphertext_key(i) for i in range(count)] \
                or any(v.dtype != torch.uint8 or v.dim() != 1 for v in cipher.values()):
            raise IncompatibleUpdate(f"expected {count} ciphertexts as 1-D uint8 tensors "
                                     f"{ciphertext_key(0)}...; got {len(cipher)}")
        self._parsed[update.site] = ckks.parse(self.context, ciphertexts_of(cipher), self.length)
        return update

    def receive(self, update: Update) -> None:
        self._sum = ckks.add(self._sum, self._parsed.pop(update.site))
        clear = {k: v for k, v in update.state.items() if not k.startswith(CIPHERTEXT_PREFIX)}
        self._plain.add(clear, update.n_samples)
        self._delivered.append(update.site)

    def close_stage(self) -> None:
        if self._sum is None:
            return  # nobody delivered: the model stays as it was
        mean = self.decryptor.decrypt(ckks.serialize(self._sum), self.length, self._delivered,
                                      self._round)
        averaged = self.moved(self.keys, mean)
        if self._plain.count and len(self.keys) < len(averaged):
            averaged |= {k: v.to(averaged[k].dtype) for k, v in self._plain.result().items()}
        self.hand_over(averaged, "homomorphic-aggregate")
        self._trained |= set(self._delivered)
