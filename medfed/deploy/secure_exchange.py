"""Secure aggregation over the deployment's gRPC sessions: the server's Coordinator and the site's
answers to it.

The server relays the protocol's messages (privacy/secagg.py) as tasks on each site's Session
stream, in JSON (privacy/secagg_json.py):

    secagg.advertise    {params}          -> {advert}      round 0: each site's signed public keys
    secagg.share        {book}            -> {shares}      round 1: the site verifies every advert,
                                                                    shares AES-GCM site to site
    secagg.receive      {shares for it}   -> {}
    (train: the masked input, as the site's update)                  round 2
    secagg.consistency  {survivors}       -> {signature}   round 3: the site signs U3, once
    secagg.unmask       {request}         -> {response}    round 4: with >= t signatures of U3;
                                                                    shares for unmasking

The server only relays: every check of the malicious-server variant (signatures against the
federation's CA, one survivor set per round, t above half the round) runs at the site, in the same
SiteSession as in simulation; a site that stops says why in its task's error, which the server
audits. The server sees public keys, certificates, signatures and ciphertexts, never a share in
the clear. The audit trail records who took part in each step, never a key or a share. A site that gives no answer before the round's
deadline is left out of that step, as a site that drops out; the protocol decides whether the
round can still finish (secagg.py's errors name why not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from medfed.config import RunConfig
from medfed.privacy import secagg
from medfed.privacy import secagg_json as wire
from medfed.privacy.fixed_point import FixedPoint
from medfed.privacy.secure_round import SecureSite
from medfed.privacy.signing import Trust
from medfed.transport.grpc_transport import GrpcTransport
from medfed.types import SiteId

ADVERTISE, SHARE, RECEIVE = "secagg.advertise", "secagg.share", "secagg.receive"
CONSISTENCY, UNMASK = "secagg.consistency", "secagg.unmask"
KINDS = (ADVERTISE, SHARE, RECEIVE, CONSISTENCY, UNMASK)
T = TypeVar("T")


class GrpcCoordinator:
    """The Coordinator (privacy/secure_round.py) of a deployment: each step is one exchange of
    small JSON tasks with the round's sites."""

    def __init__(self, transport: GrpcTransport, trust: Trust | None = None) -> None:
        """trust: the federation's CA, to check key adverts before the key book (None: the
        sites alone check them)."""
        self.transport, self.trust = transport, trust
        self.transport.masked = True

    def setup(self, params: secagg.Params, codec: FixedPoint) -> dict[SiteId, secagg.KeyAdvert]:
        self.transport.key_holders = set()  # until the book is complete, nobody may send a mask
        body = {"params": wire.params_to_json(params)}
        answers = self._exchange(ADVERTISE, {s: body for s in params.sites})
        adverts = self._parse(ADVERTISE, answers, lambda a: wire.advert_from_json(a["advert"]))
        adverts = self._signed(adverts, params)
        book = secagg.key_book([a for s, a in adverts.items() if a.site == s], params)
        listed = [wire.advert_to_json(book[s]) for s in book]
        answers = self._exchange(SHARE, {s: {"book": listed} for s in book})
        missing = sorted(set(book) - set(answers))
        if missing:  # their pairwise masks could never be removed: stop before anyone masks
            raise secagg.SecureAggregationError(
                f"sites {', '.join(missing)} advertised keys but sent no shares; the round's masks "
                "could not be removed, so it stops before masking")
        bundles = self._parse(SHARE, answers,
                              lambda a: [wire.share_from_json(x) for x in a["shares"]])
        if set(bundles) != set(book):
            raise secagg.SecureAggregationError(
                f"sites {', '.join(sorted(set(book) - set(bundles)))} sent malformed shares; the "
                "round stops before masking")
        inbox = secagg.route_shares([[x for x in b if x.sender == s] for s, b in bundles.items()])
        self._exchange(RECEIVE, {s: {"shares": [wire.share_to_json(x) for x in inbox.get(s, [])]}
                                 for s in book})
        self.transport.key_holders = set(book)
        self._audit("secagg_keys_shared", sites=list(book),
                    left_out=[s for s in params.sites if s not in book])
        return book

    def _signed(self, adverts: dict[SiteId, secagg.KeyAdvert], params: secagg.Params
                ) -> dict[SiteId, secagg.KeyAdvert]:
        """The adverts signed under their site's certificate: the server checks them before
        building the key book, as every site will, so that one site's bad advert leaves out that
        site only (the sites still check the whole book: this check is for liveness, not trust)."""
        if self.trust is None:
            return adverts
        kept = {}
        for site, advert in adverts.items():
            refusal = "it names another site" if advert.site != site else \
                secagg.advert_refusal(advert, params, self.trust)
            if refusal is None:
                kept[site] = advert
            else:
                self._audit("secagg_no_answer", site=site, step=ADVERTISE,
                            reason=f"advert refused: {refusal}"[:300])
        return kept

    def consistency_check(self, survivors: tuple[SiteId, ...]) -> list[secagg.SurvivorSignature]:
        body = {"survivors": list(survivors)}
        answers = self._exchange(CONSISTENCY, {s: body for s in survivors})
        parsed = self._parse(CONSISTENCY, answers,
                             lambda a: wire.signature_from_json(a["signature"]))
        signatures = [x for s, x in parsed.items() if x.site == s]
        self._audit("survivors_signed", survivors=list(survivors),
                    sites=[x.site for x in signatures])
        return signatures

    def unmask(self, request: secagg.UnmaskRequest) -> list[secagg.UnmaskResponse]:
        self._audit("unmask_requested", survivors=list(request.survivors),
                    dropped=list(request.dropped))
        body = {"request": wire.request_to_json(request)}
        answers = self._exchange(UNMASK, {s: body for s in request.signatures})
        parsed = self._parse(UNMASK, answers, lambda a: wire.response_from_json(a["response"]))
        responses = [r for s, r in parsed.items() if r.site == s]
        self._audit("unmask_answered", sites=[r.site for r in responses])
        if request.dropped:
            self._audit("dropouts_unmasked", sites=list(request.dropped))
        return responses

    def _exchange(self, kind: str, bodies: dict[SiteId, dict[str, Any]]
                  ) -> dict[SiteId, dict[str, Any]]:
        """The sites that answered, and their answers; the others are audited and left out."""
        answers = {}
        for site, answer in self.transport.exchange(kind, bodies).items():
            if isinstance(answer, Exception):
                self._audit("secagg_no_answer", site=site, step=kind, reason=str(answer)[:300])
            else:
                answers[site] = answer
        return answers

    def _parse(self, kind: str, answers: dict[SiteId, dict[str, Any]], parse: Callable[[Any], T]
               ) -> dict[SiteId, T]:
        """Each site's answer read as a message; a malformed one leaves that site out."""
        out = {}
        for site, raw in answers.items():
            try:
                out[site] = parse(raw)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
                    RecursionError, secagg.SecureAggregationError) as exc:  # hostile JSON
                self._audit("secagg_no_answer", site=site, step=kind,
                            reason=f"malformed answer: {exc}"[:300])
        return out

    def _audit(self, event: str, **fields: Any) -> None:
        self.transport.registry.audit(event, round=self.transport.round + 1, **fields)


def answer(site: SecureSite, config: RunConfig, kind: str, body: Any) -> dict[str, Any]:
    """A site's answer to one secure aggregation task, with the same SecureSite as in simulation.
    The site takes the fixed-point scale from the federation's configuration, and refuses a
    threshold lower than the configuration's or not above half of the round's sites (Params)."""
    if kind == ADVERTISE:
        params = wire.params_from_json(_get(body, "params"))
        p = config.privacy
        least = p.threshold or len(params.sites) // 2 + 1
        if params.threshold < least:
            raise secagg.SecureAggregationError(f"site {site.site} refuses threshold "
                                                f"{params.threshold}, below {least}")
        codec = FixedPoint(p.fixed_point_scale, sites=len(params.sites))
        return {"advert": wire.advert_to_json(site.advertise(params, codec))}
    if kind == SHARE:
        book = {a.site: a for a in map(wire.advert_from_json, _get(body, "book"))}
        return {"shares": [wire.share_to_json(x) for x in site.share_keys(book)]}
    if kind == RECEIVE:
        site.receive_shares([wire.share_from_json(x) for x in _get(body, "shares")])
        return {}
    if kind == CONSISTENCY:
        survivors = wire.sites_from_json(_get(body, "survivors"))
        return {"signature": wire.signature_to_json(site.sign_survivors(survivors))}
    if kind == UNMASK:
        response = site.unmask(wire.request_from_json(_get(body, "request")))
        return {"response": wire.response_to_json(response)}
    raise secagg.SecureAggregationError(f"unknown secure aggregation task '{kind}'")


def _get(body: Any, name: str) -> Any:
    if not isinstance(body, dict) or name not in body:
        raise secagg.SecureAggregationError(f"secure aggregation message without '{name}'")
    return body[name]
