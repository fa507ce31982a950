"""CKKS homomorphic encryption of update vectors (TenSEAL): the federation's context, and the four
operations the protocol needs: encrypt (site), check and add (server), decrypt (site).

The server only ever adds ciphertexts: it never multiplies, rotates or rescales, so it needs no
relinearization or Galois keys, and its context holds the parameters alone. Sites encrypt
symmetrically with the federation's secret key (they all hold it); the public context then carries
no key at all, and a server holding it can add but neither decrypt nor encrypt.

Parameters (Cheon, Kim, Kim & Song 2017, "Homomorphic encryption for arithmetic of approximate
numbers"; SEAL's 128-bit security table):
    poly_modulus_degree N = 8192    4096 slots per ciphertext; 128-bit security allows a modulus
                                    of up to 218 bits at this N
    coeff_mod_bit_sizes [60, 40, 60] one data level of 100 bits plus the special prime; additions
                                    consume no level, so each extra 40-bit prime would only make
                                    every ciphertext a third larger
    scale 2^40                      a value decrypts as m + e with |e| ~ 1e-9 (measured; the tests
                                    check it), and |m| may reach 2^100 / 2 / 2^40 = 2^59 before it
                                    wraps: a weighted change n_k * (x_k - x), summed over the sites,
                                    and the total weight sum_k n_k are orders of magnitude below,
                                    while dividing the sum by sum_k n_k makes its error smaller still.
A vector longer than 4096 values travels as ceil(d / 4096) ciphertexts, each serialized with
TenSEAL's own serialize() (protobuf around SEAL's format, never pickle).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medfed.errors import ConfigError, IncompatibleUpdate

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 40, 60)
SCALE_BITS = 40
SLOTS = POLY_MODULUS_DEGREE // 2
# What one serialized ciphertext may weigh: two polynomials over the two data primes, 8 bytes a
# coefficient, plus a margin for headers and an incompressible stream (a fresh one is ~289 KB).
CIPHERTEXT_BYTES = 2 * POLY_MODULUS_DEGREE * (len(COEFF_MOD_BIT_SIZES) - 1) * 8 * 5 // 4
INSTALL = "pip install 'medfed[he]'"


def tenseal() -> Any:
    """The TenSEAL module, or one clear line saying how to install it."""
    try:
        import tenseal as ts
    except ImportError:
        raise ConfigError(f"homomorphic encryption needs TenSEAL, which is not installed: "
                          f"{INSTALL}") from None
    return ts


def available() -> bool:
    try:
        tenseal()
    except ConfigError:
        return False
    return True


def new_context() -> tuple[bytes, bytes]:
    """A fresh federation context: (secret serialization for the sites, public one for the
    server). Fresh keys from SEAL's own entropy, never from a configured seed."""
    ts = tenseal()
    context = ts.context(ts.SCHEME_TYPE.CKKS, POLY_MODULUS_DEGREE, -1, list(COEFF_MOD_BIT_SIZES),
                         encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    context.global_scale = 2.0 ** SCALE_BITS
    secret = context.serialize(save_public_key=False, save_secret_key=True,
                               save_galois_keys=False, save_relin_keys=False)
    return secret, public_of(load(secret, private=True))


def public_of(context: Any) -> bytes:
    """What the server may hold: the parameters, without the secret key."""
    return context.serialize(save_public_key=False, save_secret_key=False,
                             save_galois_keys=False, save_relin_keys=False)


def load(blob: bytes, private: bool) -> Any:
    """A serialized context, checked to be what its holder must have: a site's holds the secret
    key (private=True); the server's must not (private=False), so it cannot decrypt."""
    ts = tenseal()
    try:
        context = ts.context_from(blob)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"not a TenSEAL CKKS context: {exc}") from None
    if private and not context.is_private():
        raise ConfigError("this CKKS context holds no secret key: a site needs the secret context "
                          "`medfed certs issue --homomorphic` wrote beside its key")
    if not private and context.is_private():
        raise ConfigError("this CKKS context holds the federation's secret key: the server must "
                          "only get the public one (server.ckks), or it could decrypt every update")
    return context


def chunk_lengths(d: int) -> list[int]:
    """How a vector of d values is cut into ciphertexts of at most SLOTS values."""
    return [min(SLOTS, d - start) for start in range(0, d, SLOTS)]


def encrypt(context: Any, vector: np.ndarray) -> list[bytes]:
    """One serialized ciphertext per chunk of SLOTS values."""
    ts = tenseal()
    values = np.asarray(vector, dtype=np.float64)
    return [ts.ckks_vector(context, values[start:start + n].tolist()).serialize()
            for start, n in zip(range(0, len(values), SLOTS), chunk_lengths(len(values)))]


def parse(context: Any, blobs: list[bytes], d: int) -> list[Any]:
    """A site's ciphertexts, checked against the server's context: the expected count, each of
    the expected length, size and scale. Anything else is that site's IncompatibleUpdate."""
    ts = tenseal()
    lengths = chunk_lengths(d)
    if len(blobs) != len(lengths):
        raise IncompatibleUpdate(f"{len(blobs)} ciphertexts, expected {len(lengths)}")
    vectors = []
    for i, (blob, n) in enumerate(zip(blobs, lengths)):
        if len(blob) > CIPHERTEXT_BYTES:
            raise IncompatibleUpdate(f"ciphertext {i}: {len(blob)} bytes, over {CIPHERTEXT_BYTES}")
        try:
            vector = ts.ckks_vector_from(context, blob)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise IncompatibleUpdate(f"ciphertext {i} does not parse under the federation's CKKS "
                                     f"context: {str(exc)[:100]}") from None
        if vector.size() != n:
            raise IncompatibleUpdate(f"ciphertext {i} holds {vector.size()} values, expected {n}")
        _check_shape(i, vector.ciphertext())
        vectors.append(vector)
    return vectors


def _check_shape(i: int, seal: list[Any]) -> None:
    """One fresh SEAL ciphertext: two polynomials over the data primes at the federation's scale
    (a sum of two ciphertexts of other scales or levels would be garbage, or raise mid-round)."""
    if len(seal) != 1:
        raise IncompatibleUpdate(f"ciphertext {i} packs {len(seal)} SEAL ciphertexts, expected 1")
    c = seal[0]
    shape = (c.size(), c.coeff_modulus_size(), c.poly_modulus_degree())
    if shape != (2, len(COEFF_MOD_BIT_SIZES) - 1, POLY_MODULUS_DEGREE) \
            or not math.isclose(c.scale, 2.0 ** SCALE_BITS, rel_tol=1e-9):
        raise IncompatibleUpdate(f"ciphertext {i} has (size, primes, degree) {shape} and scale "
                                 f"{c.scale:g}; expected (2, {len(COEFF_MOD_BIT_SIZES) - 1}, "
                                 f"{POLY_MODULUS_DEGREE}) at 2^{SCALE_BITS}")


def add(total: list[Any] | None, vectors: list[Any]) -> list[Any]:
    """The running sum of the sites' ciphertexts (the server's whole job)."""
    if total is None:
        return vectors
    for running, vector in zip(total, vectors, strict=True):
        running.add_(vector)
    return total


def serialize(vectors: list[Any]) -> list[bytes]:
    return [v.serialize() for v in vectors]


def decrypt(context: Any, blobs: list[bytes], d: int) -> np.ndarray:
    """A summed vector, decrypted at a site (context: the secret one)."""
    vectors = parse(context, blobs, d)
    return np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors]) \
        if vectors else np.zeros(0)
