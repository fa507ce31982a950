"""Homomorphic aggregation over the deployment's gRPC sessions: the server's Decryptor and the
site's answer to it.

    (train: the site's ciphertexts, as its update)                       each round
    he.decrypt  {the summed ciphertexts}, {length, round}  -> {mean}     after the server's sum

The summed ciphertexts travel as a safetensors message of uint8 tensors (TenSEAL's serialization,
never pickle), in chunks like any model; the answer is the mean change as one float64 tensor. Every
site of the round is asked, and their answers must agree (homomorphic.agreed): a round whose sum
nobody decrypts, or whose decryptions disagree, fails like a round without min_sites and is run
again. The audit trail records who was asked and who answered, never a value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medfed.errors import BadReply, IncompatibleUpdate, TransportError
from medfed.privacy.homomorphic import (
    HomomorphicError,
    HomomorphicSite,
    agreed,
    as_state,
    ciphertexts_of,
)
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.grpc_transport import GrpcTransport
from medfed.types import SiteId

DECRYPT = "he.decrypt"
MEAN = "medfed.he.mean"


class GrpcDecryptor:
    """The Decryptor (privacy/homomorphic.py) of a deployment."""

    def __init__(self, transport: GrpcTransport) -> None:
        self.transport = transport

    def decrypt(self, summed: list[bytes], length: int, sites: list[SiteId],
                round_index: int) -> np.ndarray:
        # Its own deadline, the evaluation's: the round's may be spent by the slowest trainer.
        replies = self.transport.ask_each(DECRYPT, as_state(summed),
                                          {"length": length, "round": round_index}, sites,
                                          self.transport.eval_seconds)
        answers: dict[SiteId, np.ndarray] = {}
        for site, reply in replies.items():
            try:
                if isinstance(reply, TransportError):
                    raise reply
                answers[site] = _mean_of(reply.blob)
            except (TransportError, IncompatibleUpdate) as exc:
                self._audit("he_no_answer", site=site, reason=str(exc)[:300])
        self._audit("he_sum_decrypted", asked=sites, answered=sorted(answers))
        if not answers:
            raise HomomorphicError(f"none of the round's sites ({', '.join(sites)}) decrypted its "
                                   "sum")
        return agreed(answers, length)

    def _audit(self, event: str, **fields: Any) -> None:
        self.transport.registry.audit(event, round=self.transport.round + 1, **fields)


def _mean_of(blob: bytes) -> np.ndarray:
    state = decode_state(blob)
    if set(state) != {MEAN} or state[MEAN].dtype != torch.float64 or state[MEAN].dim() != 1:
        raise BadReply(f"a decryption must be one 1-D float64 tensor '{MEAN}'")
    return state[MEAN].numpy()


def answer(site: HomomorphicSite, options: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
    """A site's answer to he.decrypt, with the same HomomorphicSite as in simulation."""
    length, round_index = options.get("length"), options.get("round")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in (length, round_index)):
        raise HomomorphicError("a decryption request needs its vector's length and its round")
    mean = site.decrypt(ciphertexts_of(decode_state(blob)), length, round_index)
    return {}, encode_state({MEAN: torch.from_numpy(np.ascontiguousarray(mean))})
