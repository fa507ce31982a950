"""A malicious server against secure aggregation (Bonawitz et al. 2017, §4 and §6), in process.

The test plays the server: it drives honest SiteSessions (privacy/secagg_site.py, with all their
checks) and deviates from the protocol wherever an attack needs to, then tries to recover one
site's input x_v from its masked input y_v and whatever shares the sites revealed (`recover`):

  (a) split view: unmask requests to two disjoint groups, one told that site-0 survived (they
      reveal its self-mask b_0), the other that it dropped (they reveal its mask key s_0^SK);
  (b) substituted keys: the server's own keys in the key book, under every certificate it can get;
  (c) a site dropped after the consistency check, and its self-mask asked for.

In each the server recovers nothing and every honest site that stops raises a
SecureAggregationError saying why. The attack of (a) worked before this test existed: on commit
d1cd387 (honest-but-curious protocol, any t >= 2) with t = 2, n = 5, sites 0-1 answered "site-0
survived" and sites 2-3 "site-0 dropped", and the server rebuilt b_0 and s_0^SK and read x_0
exactly. The positive controls re-run (a) and (b) with the defending check switched off and read
x_0 exactly, so `recover` is not vacuous.

Mutations of the mechanism tried by hand (each made the named tests fail; restored after):
  - Params: the t > n/2 check removed                -> (a) the old attack with t = 2 of 5 (the
                                                        server reads x_0), the t <= n/2 refusals
  - SiteSession._check_book: adverts not verified    -> (b) every variant, other params
  - Trust._check: issuer not checked                 -> (b) "a CA of the server's own"
  - Trust._check: common name not checked            -> (b) "a colluding site's certificate"
  - Trust._check: client-auth / not-a-CA not checked -> (b) "the server's own certificate"
  - advert_message without the params digest         -> (b) other params
  - own advert not compared with the session's keys  -> (b) a replayed advert of the site itself
  - sign_survivors signs a second, different set     -> (a) split view, (c) dropped after signing
  - unmask answers a set other than the one signed   -> (c) both
  - unmask without checking the t signatures         -> (a) split view (the minority answers),
                                                        (c) called dropped
  - unmask trusts the request's dropped list         -> (c) dropped after signing
  - SecureSite sends n_k, n_steps or its metrics in  -> test_secure_round.py's
    the clear metadata                                  test_what_the_server_receives_never_...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medfed.deploy import certs
from medfed.privacy import secagg, shamir
from medfed.privacy import secagg_json as wire
from medfed.privacy.fixed_point import FixedPoint, ring_sum
from medfed.privacy.secagg import SecureAggregationError, UnmaskRequest
from medfed.privacy.secagg_site import SiteSession
from medfed.privacy.signing import SIGNATURE, SigningIdentity, Trust, ephemeral_identities

N, T, LENGTH = 5, 3, 16
SITES = tuple(f"site-{k}" for k in range(N))
VICTIM = "site-0"
WITHOUT = SITES[1:]  # the survivor set that calls the victim dropped


@pytest.fixture(scope="module")
def federation_certs(tmp_path_factory) -> Path:
    """Real `medfed certs` files: the federation's CA, one certificate per site, the server's."""
    folder = tmp_path_factory.mktemp("certs")
    certs.init_ca(folder)
    for name in (*SITES, certs.SERVER_NAME):
        certs.issue(folder, name)
    return folder


@pytest.fixture(scope="module")
def identities(federation_certs) -> dict[str, SigningIdentity]:
    loaded = {s: certs.load_identity(federation_certs, s) for s in SITES}
    return {s: SigningIdentity.from_pem(s, i.certificate, i.key, i.ca) for s, i in loaded.items()}


@dataclass
class Round:
    params: secagg.Params
    sessions: dict[str, SiteSession]
    book: dict[str, secagg.KeyAdvert]
    x: dict[str, np.ndarray]  # the inputs the server must not learn
    masked: dict[str, np.ndarray]  # y_u, as the server received them


def keys_exchanged(identities, threshold=T) -> Round:
    """Rounds 0 and 1, honestly."""
    params = secagg.Params(SITES, threshold, LENGTH, b"round 0")
    sessions = {s: SiteSession(s, params, identities[s]) for s in SITES}
    book = secagg.key_book([sessions[s].advertise() for s in SITES], params)
    inbox = secagg.route_shares([sessions[s].share_keys(book) for s in SITES])
    for s in SITES:
        sessions[s].receive_shares(inbox[s])
    rng = np.random.default_rng(7)
    x = {s: FixedPoint(sites=N).encode(rng.normal(0, 1, LENGTH)) for s in SITES}
    return Round(params, sessions, book, x, {})


def masked_round(identities, threshold=T) -> Round:
    """Rounds 0 to 2 honestly: every site's masked input reached the server."""
    r = keys_exchanged(identities, threshold)
    r.masked = {s: r.sessions[s].mask(r.x[s]).vector for s in SITES}
    return r


def ask(r: Round, sites, step) -> tuple[dict, dict[str, str]]:
    """Each site's answer to one step, and the reason of each site that refused."""
    answers, refusals = {}, {}
    for s in sites:
        try:
            answers[s] = step(r.sessions[s])
        except SecureAggregationError as exc:
            refusals[s] = str(exc)
    return answers, refusals


def sign(r: Round, sites, survivors) -> tuple[dict[str, bytes], dict[str, str]]:
    answers, refusals = ask(r, sites, lambda s: s.sign_survivors(survivors))
    return {s: a.signature for s, a in answers.items()}, refusals


def unmask(r: Round, sites, request) -> tuple[list[secagg.UnmaskResponse], dict[str, str]]:
    answers, refusals = ask(r, sites, lambda s: s.unmask(request))
    return list(answers.values()), refusals


def recover(r: Round, self_shares: list[bytes], key_shares: list[bytes],
            book: dict[str, secagg.KeyAdvert] | None = None) -> np.ndarray | None:
    """The victim's x from its y, if the server holds t shares of both b_0 and s_0^SK."""
    t = r.params.threshold
    try:
        b = shamir.reconstruct([shamir.Share.from_bytes(s) for s in self_shares], t, 32)
        raw = shamir.reconstruct([shamir.Share.from_bytes(s) for s in key_shares], t, 32)
    except shamir.SharingError:
        return None
    key, book = X25519PrivateKey.from_private_bytes(raw), book or r.book
    x = r.masked[VICTIM] - secagg.prg(b, LENGTH)
    for u in SITES[1:]:  # the victim is the lowest site: it added every pairwise mask
        x -= secagg.prg(secagg.agree(key, book[u].mask_key, b"mask", r.params.context), LENGTH)
    return x


def victim_shares(responses) -> tuple[list[bytes], list[bytes]]:
    return ([x.self_mask_shares[VICTIM] for x in responses if VICTIM in x.self_mask_shares],
            [x.key_shares[VICTIM] for x in responses if VICTIM in x.key_shares])


def split_view(r: Round) -> tuple[list, list, dict[str, str]]:
    """(a): the first t sites commit to "site-0 survived", the others to "site-0 dropped"; the
    server pads the minority's request with the majority's signatures. What each group revealed,
    and every refusal."""
    first, second = SITES[:r.params.threshold], SITES[r.params.threshold:]
    signed_all, refused = sign(r, first, SITES)
    signed_without, more = sign(r, second, WITHOUT)
    again, twice = sign(r, first[1:], WITHOUT)  # the majority asked to sign the other set too
    refused |= more | {f"{s} (twice)": e for s, e in twice.items()}
    survived, told = unmask(r, first, UnmaskRequest(SITES, (), signed_all))
    padded = {**{s: g for s, g in signed_all.items() if s != VICTIM}, **again, **signed_without}
    dropped, refusals = unmask(r, second, UnmaskRequest(WITHOUT, (VICTIM,), padded))
    if not dropped:  # the minority refused the padded request: try with its own signatures alone
        dropped, refusals = unmask(r, second, UnmaskRequest(WITHOUT, (VICTIM,), signed_without))
    return survived, dropped, refused | told | refusals


# ---- (a) split view ------------------------------------------------------------------------------

def test_the_old_attack_with_t_2_of_5_fails_at_every_site(identities):
    """The server proposes t = 2 for 5 sites; every site refuses the round. (Were one to accept,
    the attack is played to its end and must still fail.)"""
    proposal = {"sites": list(SITES), "threshold": 2, "length": LENGTH, "context": "cm91bmQgMA=="}
    refusals = {}
    for site in SITES:
        try:  # what a site does with the server's proposal (secure_exchange.answer)
            SiteSession(site, wire.params_from_json(proposal), identities[site])
        except SecureAggregationError as exc:
            refusals[site] = str(exc)
    if len(refusals) < N:
        r = masked_round(identities, threshold=2)
        survived, dropped, _ = split_view(r)
        assert recover(r, *victim_shares(survived + dropped)) is None
    assert all("threshold t = 2 is not above half of the round's 5 sites" in e and "use t >= 3" in e
               for e in refusals.values())


def test_split_unmask_requests_recover_nothing_and_the_minority_says_why(identities):
    r = masked_round(identities)
    survived, dropped, refusals = split_view(r)
    assert recover(r, *victim_shares(survived + dropped)) is None
    assert len(survived) == T and dropped == []  # s_0^SK never left a site
    for site in ("site-1 (twice)", "site-2 (twice)"):
        assert "will not sign {site-1, site-2, site-3, site-4}" in refusals[site]
        assert "showing sites different survivor sets" in refusals[site]
    for site in ("site-3", "site-4"):
        assert refusals[site].startswith(f"site {site} stops the round: only 2 sites signed the "
                                         "survivor set, fewer than t = 3")
    # what the server can still do is what the protocol allows: the sum of all five inputs
    total = secagg.unmask(ring_sum(list(r.masked.values())), UnmaskRequest(SITES, ()), survived,
                          r.book, r.params)
    np.testing.assert_array_equal(total, ring_sum(list(r.x.values())))


def test_positive_control_split_view_reads_a_site_when_t_is_half(identities, monkeypatch):
    """The old attack, with the t > n/2 check switched off (t = 2, n = 5)."""
    monkeypatch.setattr(secagg.Params, "__post_init__", lambda self: None)
    r = masked_round(identities, threshold=2)
    survived, dropped, refusals = split_view(r)
    assert refusals.keys() == {"site-1 (twice)"}  # sites 2-3 and 0-1 each signed their own set
    np.testing.assert_array_equal(recover(r, *victim_shares(survived + dropped)), r.x[VICTIM])


# ---- (b) substituted keys ------------------------------------------------------------------------

def server_key(folder: Path):
    return serialization.load_pem_private_key((folder / "server.key").read_bytes(), None)


def forged_book(r: Round, folder: Path, how: str) -> tuple[dict, dict[str, X25519PrivateKey]]:
    """The key book the server sends the victim: every other site's keys replaced by its own,
    signed in the way `how` names. Also the server's private cipher keys."""
    book, cipher = dict(r.book), {}
    rogue_ca = ephemeral_identities(SITES)  # a CA of the server's own, certificates for every name
    for u in SITES[1:]:
        cipher[u] = X25519PrivateKey.generate()
        c, m = secagg.raw_public(cipher[u]), secagg.raw_public(X25519PrivateKey.generate())
        message = secagg.advert_message(r.params, u, c, m)
        certificate, signature = r.book[u].certificate, r.book[u].signature  # "kept"
        if how == "a CA of the server's own":
            certificate, signature = rogue_ca[u].certificate, rogue_ca[u].sign(message)
        elif how == "the server's own certificate":
            key = server_key(folder)
            certificate = (folder / "server.crt").read_bytes()
            signature = key.sign(message, SIGNATURE)
        elif how == "a colluding site's certificate":
            colluder = SigningIdentity.from_pem("site-4", *(
                (folder / n).read_bytes() for n in ("site-4.crt", "site-4.key", "ca.crt")))
            certificate, signature = colluder.certificate, colluder.sign(message)
        book[u] = secagg.KeyAdvert(u, c, m, certificate, signature)
    return book, cipher


def read_shares(r: Round, shares, cipher) -> tuple[list[bytes], list[bytes]]:
    """The victim's shares the server can decrypt with its substituted cipher keys."""
    out: tuple[list[bytes], list[bytes]] = ([], [])
    for share in shares:
        key = secagg.agree(cipher[share.recipient], r.book[VICTIM].cipher_key, b"share",
                           r.params.context)
        plain = AESGCM(key).decrypt(share.ciphertext[:12], share.ciphertext[12:],
                                    f"{VICTIM}->{share.recipient}".encode())
        out[0].append(plain[:len(plain) // 2])
        out[1].append(plain[len(plain) // 2:])
    return out


def substitute_keys(r: Round, folder: Path, how: str) -> tuple[np.ndarray | None, str]:
    """(b) against the victim: rounds 0-2 with the forged book; what the server reads."""
    r.sessions[VICTIM] = SiteSession(VICTIM, r.params, r.sessions[VICTIM].identity)
    r.book[VICTIM] = r.sessions[VICTIM].advertise()
    book, cipher = forged_book(r, folder, how)
    try:
        shares = r.sessions[VICTIM].share_keys(book)
    except SecureAggregationError as exc:
        return None, str(exc)
    r.masked[VICTIM] = r.sessions[VICTIM].mask(r.x[VICTIM]).vector
    return recover(r, *read_shares(r, shares, cipher), book=book), ""


@pytest.mark.parametrize("how, reason", [
    ("kept", "carries a signature that is not site-1's"),
    ("a CA of the server's own", "carries a certificate the federation's CA did not issue"),
    ("the server's own certificate", ("carries a certificate that is not a site's (a CA's or a "
                                     "server's)")),
    ("a colluding site's certificate", "carries a certificate for site-4, not for site-1"),
])
def test_substituted_keys_are_refused_before_any_share_leaves(identities, federation_certs, how,
                                                               reason):
    r = keys_exchanged(identities)
    x, refusal = substitute_keys(r, federation_certs, how)
    assert x is None
    assert refusal == (f"site {VICTIM} stops the round: the key advert of site-1 {reason}; the server "
                       "may have substituted its keys")


def test_positive_control_substituted_keys_read_a_site_without_signature_checks(
        identities, federation_certs, monkeypatch):
    monkeypatch.setattr(Trust, "verify", lambda self, *args: None)
    r = keys_exchanged(identities)
    x, _ = substitute_keys(r, federation_certs, "kept")
    np.testing.assert_array_equal(x, r.x[VICTIM])


def test_a_replayed_advert_of_the_site_itself_is_refused(identities):
    """The server asks site-0 to advertise twice in a round and lists its first keys: validly
    signed, but not the keys its session holds."""
    r = keys_exchanged(identities)
    stale = SiteSession(VICTIM, r.params, identities[VICTIM]).advertise()
    fresh = SiteSession(VICTIM, r.params, identities[VICTIM])
    fresh.advertise()
    with pytest.raises(SecureAggregationError, match="its own key advert came back altered"):
        fresh.share_keys(dict(r.book) | {VICTIM: stale})


def test_an_advert_signed_for_other_params_is_refused(identities):
    """The server cannot show sites different rounds (sites, t, length, context): an advert signed
    under other params does not verify."""
    r = keys_exchanged(identities)
    other = secagg.Params(SITES, 4, LENGTH, b"round 0")  # the server told site-1 t = 4
    fresh = SiteSession(VICTIM, r.params, identities[VICTIM])
    book = dict(r.book) | {VICTIM: fresh.advertise(),
                           "site-1": SiteSession("site-1", other, identities["site-1"]).advertise()}
    with pytest.raises(SecureAggregationError, match="key advert of site-1 carries a signature"):
        fresh.share_keys(book)


# ---- (c) a site dropped after the consistency check -------------------------------------------

def test_a_site_dropped_after_signing_keeps_its_mask_key(identities):
    """All five signed "everyone survived"; the server then calls site-0 dropped, to get s_0^SK
    on top of b_0."""
    r = masked_round(identities)
    signatures, _ = sign(r, SITES, SITES)
    survived, _ = unmask(r, SITES, UnmaskRequest(SITES, (), signatures))
    dropped, refusals = unmask(r, WITHOUT, UnmaskRequest(WITHOUT, (VICTIM,), signatures))
    resigned, refused = sign(r, WITHOUT, WITHOUT)
    assert dropped == [] and resigned == {}
    assert recover(r, *victim_shares(survived + dropped)) is None
    for site in WITHOUT:
        assert refusals[site] == (f"site {site} stops the round: it answers only for the survivor "
                                  "set it signed ({site-0, site-1, site-2, site-3, site-4}), and "
                                  "was asked about {site-1, site-2, site-3, site-4}")
        assert "will not sign" in refused[site]
    lying = UnmaskRequest(SITES, (VICTIM,), signatures)  # a survivor listed as dropped as well
    assert "dropped" in unmask(r, ["site-1"], lying)[1]["site-1"]


def test_a_site_called_dropped_keeps_its_self_mask(identities):
    """Its masked input arrived, but the server calls site-0 dropped (the others reveal s_0^SK,
    as the protocol says), then asks for b_0 under "everyone survived"."""
    r = masked_round(identities)
    signatures, refusals = sign(r, SITES, WITHOUT)
    assert "it is not a survivor of its own round" in refusals[VICTIM]
    dropped, _ = unmask(r, WITHOUT, UnmaskRequest(WITHOUT, (VICTIM,), signatures))
    victim_signed, _ = sign(r, [VICTIM], SITES)  # the victim signs its own survival, alone
    survived, told = unmask(r, SITES, UnmaskRequest(SITES, (), {**signatures, **victim_signed}))
    assert survived == [] and recover(r, *victim_shares(survived + dropped)) is None
    assert told[VICTIM] == ("site site-0 stops the round: the signature of site-1 is not on this "
                            "survivor set; the server may be showing sites different survivor sets")
    alone, why = unmask(r, [VICTIM], UnmaskRequest(SITES, (), victim_signed))
    assert alone == [] and "only 1 site signed the survivor set, fewer than t = 3" in why[VICTIM]
    assert all("answers only for the survivor set it signed" in told[s] for s in WITHOUT)
    # the sum the server does get is the protocol's: the four it called survivors
    total = secagg.unmask(ring_sum([r.masked[s] for s in WITHOUT]),
                          UnmaskRequest(WITHOUT, (VICTIM,)), dropped, r.book, r.params)
    np.testing.assert_array_equal(total, ring_sum([r.x[s] for s in WITHOUT]))
