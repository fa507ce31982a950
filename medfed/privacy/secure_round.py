"""Secure aggregation in the round loop: a site wrapper that masks, a strategy wrapper that unmasks,
and the in-process coordinator that carries the protocol's other messages (secagg.py).

What travels through the transport as a site's update is its masked vector: the model's floating
tensors as int64 ring elements (same keys and shapes, dtype int64), plus WEIGHT_KEY. The round loop
checks it against `update_template(sent)` instead of the model sent. Weighted FedAvg composes: a
site pre-scales its change by its sample count n_k, the weight n_k travels masked in WEIGHT_KEY, and
the server divides the unmasked sum by the unmasked total, so it learns neither n_k nor x_k, only

    x <- x + sum_k n_k (x_k - x) / sum_k n_k.

With client-level DP the sites clip their change to S and weigh 1; the server adds N(0, (sigma S)^2)
to the unmasked sum (client_dp.py). The averaged model then goes through the wrapped strategy as a
single update (so FedAdam's server step still applies). Integer buffers (BatchNorm's counters) are
not aggregated: they come back as they were sent.

Nothing else leaves a SecureSite with its update: the count in its metadata is the constant 1, the
step count 0, no metrics (no training loss, no epsilon): n_k, n_steps (n_k / batch) and epsilon
(a function of q = batch / n_k) would each give the server the site's size. The round loop records
NaN for the loss and no epsilon for such a round. The server learns sum_k n_k of the round's
survivors and sum_k n_k (x_k - x); across rounds with different survivor sets, the difference of
two sums is a site's count (inherent to summing: the README lists it as a limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from medfed.client.trainer import LocalSite, TrainOptions
from medfed.errors import TransportError
from medfed.privacy import secagg
from medfed.privacy.client_dp import ClientDP
from medfed.privacy.fixed_point import FixedPoint, FixedPointError
from medfed.privacy.hidden_sum import HiddenSum
from medfed.privacy.secagg_site import SiteSession
from medfed.privacy.signing import SigningIdentity
from medfed.types import Metrics, SiteId, StateDict, Update

WEIGHT_KEY = "secagg.weight"


class Layout:
    """The model's floating tensors as one flat vector (sorted by name), and back."""

    def __init__(self, reference: StateDict) -> None:
        self.keys = sorted(k for k, v in reference.items() if v.is_floating_point())
        self.shapes = {k: reference[k].shape for k in self.keys}
        self.length = sum(reference[k].numel() for k in self.keys) + 1  # + the weight

    def flatten(self, state: StateDict) -> np.ndarray:
        return np.concatenate([state[k].detach().reshape(-1).to(torch.float64).numpy()
                               for k in self.keys])

    def to_state(self, ring: np.ndarray, sent: StateDict) -> StateDict:
        """A masked vector as the update a site sends (int64 views of the ring elements)."""
        out, start = {}, 0
        signed = ring.view(np.int64)
        for k in self.keys:
            n = self.shapes[k].numel()
            out[k] = torch.from_numpy(signed[start:start + n].copy()).reshape(self.shapes[k])
            start += n
        out[WEIGHT_KEY] = torch.from_numpy(signed[start:].copy())
        return out | {k: v for k, v in sent.items() if k not in self.shapes}

    def from_state(self, state: StateDict) -> np.ndarray:
        parts = [state[k].reshape(-1).numpy() for k in (*self.keys, WEIGHT_KEY)]
        return np.concatenate(parts).astype(np.int64).view(np.uint64)

    def template(self, sent: StateDict) -> StateDict:
        out = {k: torch.empty(self.shapes[k], dtype=torch.int64) for k in self.keys}
        return out | {WEIGHT_KEY: torch.empty(1, dtype=torch.int64)} \
            | {k: v for k, v in sent.items() if k not in self.shapes}


class SecureSite:
    """A site (any LocalSite) that sends its change masked: trains, pre-scales, encodes, masks.
    identity: its signing key and the CA it trusts (signing.py); without one it refuses to take
    part, since unsigned adverts would let the server substitute its own keys."""

    def __init__(self, trainer: LocalSite, clip: float | None = None,
                 identity: SigningIdentity | None = None) -> None:
        self.trainer = trainer
        self.clip = clip  # client-level DP: clip the change to S and weigh 1
        self.identity = identity
        self.session: SiteSession | None = None
        self.codec = FixedPoint()

    @property
    def site(self) -> str:
        return self.trainer.site

    def advertise(self, params: secagg.Params, codec: FixedPoint) -> secagg.KeyAdvert:
        if self.identity is None:
            raise secagg.SecureAggregationError(
                f"site {self.site} has no certificate key to sign its key advert, so it refuses "
                "secure aggregation (run the client with --certs, not --insecure)")
        self.session, self.codec = SiteSession(self.site, params, self.identity), codec
        return self.session.advertise()

    def share_keys(self, book: dict[SiteId, secagg.KeyAdvert]) -> list[secagg.EncryptedShare]:
        return self._session().share_keys(book)

    def receive_shares(self, shares: list[secagg.EncryptedShare]) -> None:
        self._session().receive_shares(shares)

    def sign_survivors(self, survivors: tuple[SiteId, ...]) -> secagg.SurvivorSignature:
        return self._session().sign_survivors(survivors)

    def unmask(self, request: secagg.UnmaskRequest) -> secagg.UnmaskResponse:
        return self._session().unmask(request)

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        honest = self.trainer.train(state, options)
        layout = Layout(state)
        change = layout.flatten(honest.state) - layout.flatten(state)
        weight = honest.n_samples
        if self.clip is not None:
            norm = float(np.linalg.norm(change))
            change, weight = change * min(1.0, self.clip / norm) if norm else change, 1
        try:
            encoded = self.codec.encode(weight * change)
        except FixedPointError:  # NaN, or too large: this site's failure (its size stays unsaid)
            raise TransportError(f"site {self.site} cannot send its update: not finite, or beyond "
                                 f"the fixed-point bound at scale {self.codec.scale:g}") from None
        ring = np.concatenate([encoded, np.array([weight], np.uint64)])
        masked = self._session().mask(ring)
        return Update(self.site, layout.to_state(masked.vector, state), n_samples=1, n_steps=0)

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.trainer.evaluate(state, split)

    def _session(self) -> SiteSession:
        if self.session is None:
            raise secagg.SecureAggregationError(f"site {self.site} has no secure aggregation round")
        return self.session


class Coordinator(Protocol):
    """Carries rounds 0, 1, 3 and 4 of the protocol (keys, shares, consistency, unmasking) between
    the server and the sites: in process (InProcessCoordinator) or over gRPC
    (deploy/secure_exchange.py). Round 2, the masked inputs, travels as the sites' updates through
    the round loop's transport."""

    def setup(self, params: secagg.Params, codec: FixedPoint) -> dict[SiteId, secagg.KeyAdvert]:
        """Rounds 0 and 1: the key book of the sites that advertised keys and shared them."""
        ...

    def consistency_check(self, survivors: tuple[SiteId, ...]) -> list[secagg.SurvivorSignature]:
        """Round 3 (ConsistencyCheck): the survivors' signatures of the survivor set."""
        ...

    def unmask(self, request: secagg.UnmaskRequest) -> list[secagg.UnmaskResponse]:
        """Round 4: the answers of the signers (request.signatures) that answered."""
        ...


class InProcessCoordinator:
    """The Coordinator of a simulation: calls each SecureSite directly."""

    def __init__(self, sites: dict[SiteId, SecureSite]) -> None:
        self.sites = sites

    def setup(self, params: secagg.Params, codec: FixedPoint) -> dict[SiteId, secagg.KeyAdvert]:
        adverts = [self.sites[s].advertise(params, codec) for s in params.sites]
        book = secagg.key_book(adverts, params)
        inbox = secagg.route_shares([self.sites[s].share_keys(book) for s in book])
        for s in book:
            self.sites[s].receive_shares(inbox.get(s, []))
        return book

    def consistency_check(self, survivors: tuple[SiteId, ...]) -> list[secagg.SurvivorSignature]:
        return [self.sites[s].sign_survivors(survivors) for s in survivors]

    def unmask(self, request: secagg.UnmaskRequest) -> list[secagg.UnmaskResponse]:
        return [self.sites[s].unmask(request) for s in request.signatures]


class SecureAggregation(HiddenSum):
    """Wraps an averaging strategy: receives masked updates, hands it only their unmasked mean."""

    def __init__(self, inner, coordinator: Coordinator, threshold: int | None = None,
                 scale: float = 2.0 ** 24, client_dp: ClientDP | None = None) -> None:
        super().__init__(inner, fact="secure_trained")
        self.protection = "secure_aggregation"  # each round's record says what hid the updates
        self.coordinator = coordinator
        self.threshold = threshold
        self.scale = scale
        self.client_dp = client_dp
        self._round = 0
        self._stages: list[list[SiteId]] = []
        self._masked_sum: np.ndarray | None = None  # streams: one running sum of masked vectors
        self._delivered: list[SiteId] = []

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        self._round, self._stages = round_index, self.inner.stages(round_index, sites)
        return self._stages

    def open_stage(self) -> None:
        sites = tuple(self._stages.pop(0))
        self.layout = Layout(self.inner.global_state)
        threshold = self.threshold or len(sites) // 2 + 1
        if not len(sites) < 2 * threshold <= 2 * len(sites):
            raise secagg.SecureAggregationError(
                f"secure aggregation needs a threshold above half of the {len(sites)} sites of round "
                f"{self._round + 1} and at most all of them, got {threshold}; adjust --fraction or "
                "--threshold")
        self.params = secagg.Params(sites, threshold, self.layout.length,
                                    context=f"round {self._round}".encode())
        self.codec = FixedPoint(self.scale, sites=len(sites))
        self.book = self.coordinator.setup(self.params, self.codec)
        self._masked_sum, self._delivered = None, []
        self.aggregation_notes = {}

    def update_template(self, sent: StateDict) -> StateDict:
        """What a site's reply looks like: its masked vector, not a model."""
        return self.layout.template(sent)

    def receive(self, update: Update) -> None:
        message = secagg.MaskedInput(update.site, self.layout.from_state(update.state))
        self._masked_sum = secagg.add_masked(self._masked_sum, message)
        self._delivered.append(update.site)

    def close_stage(self) -> None:
        if self._masked_sum is None:
            return  # nobody delivered: the model stays as it was
        request = secagg.unmask_request(self._delivered, self.book, self.params)
        signatures = self.coordinator.consistency_check(request.survivors)
        request = secagg.signed_request(request, signatures, self.params)
        responses = self.coordinator.unmask(request)
        total = secagg.unmask(self._masked_sum, request, responses, self.book, self.params)
        weight = int(total[-1:].view(np.int64)[0])
        summed = self.codec.decode(total[:-1])
        if self.client_dp is not None:
            noise = self.client_dp.noise.normal(summed.shape, self.client_dp.std, torch.float64)
            summed = summed + noise.numpy()
            self.client_dp.record_round()
        self.hand_over(self.moved(self.layout.keys, summed / weight), "secure-aggregate")
        self._trained |= set(request.survivors)
        if request.dropped:
            self.aggregation_notes = {"dropped_after_masking": list(request.dropped)}
