"""Secure aggregation's messages as JSON: every message survives the round trip; malformed
messages raise SecureAggregationError (a failed task, never a crash)."""

from __future__ import annotations

import json

import pytest

from medfed.privacy import secagg
from medfed.privacy import secagg_json as wire
from medfed.privacy.secagg import SecureAggregationError
from medfed.privacy.secagg_site import SiteSession
from medfed.privacy.signing import ephemeral_identities


def test_every_message_survives_the_json_round_trip():
    params = secagg.Params(("a", "b", "c"), 2, 7, context=b"round 3")
    identities = ephemeral_identities(params.sites)
    sessions = {s: SiteSession(s, params, identities[s]) for s in params.sites}
    adverts = [s.advertise() for s in sessions.values()]
    book = {a.site: a for a in adverts}
    shares = sessions["a"].share_keys(book)
    request = secagg.UnmaskRequest(("a", "b"), ("c",), {"a": b"sig-a", "b": b"sig-b"})
    signature = secagg.SurvivorSignature("a", b"\x30\x45")
    response = secagg.UnmaskResponse("a", {"a": b"\x01\x02", "b": b"\x03"}, {"c": b"\xff"})

    def trip(to, frm, message):
        return frm(json.loads(json.dumps(to(message))))

    assert trip(wire.params_to_json, wire.params_from_json, params) == params
    assert [trip(wire.advert_to_json, wire.advert_from_json, a) for a in adverts] == adverts
    assert [trip(wire.share_to_json, wire.share_from_json, x) for x in shares] == shares
    assert trip(wire.request_to_json, wire.request_from_json, request) == request
    assert trip(wire.signature_to_json, wire.signature_from_json, signature) == signature
    assert trip(wire.response_to_json, wire.response_from_json, response) == response


@pytest.mark.parametrize("raw", [None, [], {"site": 3, "cipher_key": "", "mask_key": ""},
                                 {"site": "a", "cipher_key": "not base64!", "mask_key": ""},
                                 {"site": "a", "cipher_key": ""}])
def test_malformed_messages_are_refused_with_a_clear_error(raw):
    with pytest.raises(SecureAggregationError, match="secure aggregation|site name"):
        wire.advert_from_json(raw)
