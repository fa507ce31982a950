"""Secure aggregation's key and unmask messages (secagg.py) as JSON, for a transport to carry.

Bytes travel as base64 text. Parsing is strict: a field that is missing or of the wrong type raises
SecureAggregationError, so a malformed message fails its task, never the process. Masked inputs do
not travel here: they are the sites' updates (int64 safetensors, secure_round.Layout).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from medfed.privacy import secagg
from medfed.privacy.secagg import SecureAggregationError


def params_to_json(params: secagg.Params) -> dict[str, Any]:
    return {"sites": list(params.sites), "threshold": params.threshold, "length": params.length,
            "context": _b64(params.context)}


def params_from_json(raw: Any) -> secagg.Params:
    sites = _field(raw, "sites", list)
    return secagg.Params(tuple(_str(s) for s in sites), _field(raw, "threshold", int),
                         _field(raw, "length", int), _bytes(_field(raw, "context", str)))


def advert_to_json(advert: secagg.KeyAdvert) -> dict[str, Any]:
    return {"site": advert.site, "cipher_key": _b64(advert.cipher_key),
            "mask_key": _b64(advert.mask_key), "certificate": advert.certificate.decode("ascii"),
            "signature": _b64(advert.signature)}


def advert_from_json(raw: Any) -> secagg.KeyAdvert:
    return secagg.KeyAdvert(_field(raw, "site", str), _bytes(_field(raw, "cipher_key", str)),
                            _bytes(_field(raw, "mask_key", str)),
                            _field(raw, "certificate", str).encode("ascii", "replace"),
                            _bytes(_field(raw, "signature", str)))


def share_to_json(share: secagg.EncryptedShare) -> dict[str, Any]:
    return {"sender": share.sender, "recipient": share.recipient,
            "ciphertext": _b64(share.ciphertext)}


def share_from_json(raw: Any) -> secagg.EncryptedShare:
    return secagg.EncryptedShare(_field(raw, "sender", str), _field(raw, "recipient", str),
                                 _bytes(_field(raw, "ciphertext", str)))


def sites_from_json(raw: Any) -> tuple[str, ...]:
    """A list of site names (the survivor set of the ConsistencyCheck)."""
    if not isinstance(raw, list):
        raise SecureAggregationError(f"expected a list of site names, got {raw!r:.60}")
    return tuple(_str(s) for s in raw)


def signature_to_json(signature: secagg.SurvivorSignature) -> dict[str, Any]:
    return {"site": signature.site, "signature": _b64(signature.signature)}


def signature_from_json(raw: Any) -> secagg.SurvivorSignature:
    return secagg.SurvivorSignature(_field(raw, "site", str), _bytes(_field(raw, "signature", str)))


def request_to_json(request: secagg.UnmaskRequest) -> dict[str, Any]:
    return {"survivors": list(request.survivors), "dropped": list(request.dropped),
            "signatures": {v: _b64(b) for v, b in request.signatures.items()}}


def request_from_json(raw: Any) -> secagg.UnmaskRequest:
    return secagg.UnmaskRequest(tuple(_str(s) for s in _field(raw, "survivors", list)),
                                tuple(_str(s) for s in _field(raw, "dropped", list)),
                                {_str(v): _bytes(b) for v, b in _field(raw, "signatures", dict).items()})


def response_to_json(response: secagg.UnmaskResponse) -> dict[str, Any]:
    return {"site": response.site,
            "self_mask_shares": {v: _b64(b) for v, b in response.self_mask_shares.items()},
            "key_shares": {v: _b64(b) for v, b in response.key_shares.items()}}


def response_from_json(raw: Any) -> secagg.UnmaskResponse:
    def shares(name: str) -> dict[str, bytes]:
        return {_str(v): _bytes(b) for v, b in _field(raw, name, dict).items()}

    return secagg.UnmaskResponse(_field(raw, "site", str), shares("self_mask_shares"),
                                 shares("key_shares"))


def _field(raw: Any, name: str, kind: type) -> Any:
    if not isinstance(raw, dict):
        raise SecureAggregationError(f"a secure aggregation message must be a JSON object, got "
                                     f"{type(raw).__name__}")
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SecureAggregationError(f"secure aggregation message field '{name}' must be "
                                     f"{kind.__name__}, got {value!r:.60}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise SecureAggregationError(f"expected a site name, got {value!r:.60}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes(text: Any) -> bytes:
    try:
        return base64.b64decode(_str(text), validate=True)
    except (binascii.Error, ValueError):
        raise SecureAggregationError("a secure aggregation field is not valid base64") from None
