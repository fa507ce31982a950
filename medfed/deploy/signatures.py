"""Signatures of the audit trail with the server's own key (server.key from `medfed certs`).

The server signs each audit record's hash; anyone holding server.crt (public) can check it, nobody
without server.key can forge it. Keys of `medfed certs` are ECDSA P-256; Ed25519 and RSA keys (a
certificate from another tool) work too. The signed bytes start with a fixed label, so an audit
signature can never be mistaken for a TLS one made with the same key.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from medfed.errors import ConfigError

LABEL = b"medfed audit record\x00"
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def sign(key: PrivateKey, digest_hex: str) -> str:
    """The base64 signature of an audit record's hash (64 hex digits)."""
    data = LABEL + bytes.fromhex(digest_hex)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(data)
    else:
        raw = key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH),
                       hashes.SHA256())
    return base64.b64encode(raw).decode()


def signed_by(key: PublicKey, digest_hex: str, signature: object) -> bool:
    """Whether signature is key's signature of the hash (False for anything malformed)."""
    try:
        raw = base64.b64decode(str(signature), validate=True)
        data = LABEL + bytes.fromhex(digest_hex)
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, data)
        else:
            key.verify(raw, data, padding.PSS(padding.MGF1(hashes.SHA256()),
                                              padding.PSS.MAX_LENGTH), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load_private_key(path: Path) -> PrivateKey:
    """A PEM private key file (unencrypted), with one clear line when it is not one."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"missing {path}; create it with `medfed certs issue`") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({_first_line(exc)}); "
                          "issue a new one with `medfed certs issue --force`") from None
    if not isinstance(key, PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}; medfed signs with ECDSA, Ed25519 "
                          "or RSA keys")
    return key


def load_public_key(path: Path) -> PublicKey:
    """The public key of a PEM certificate (server.crt) or of a PEM public key file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"missing {path}; give the server's certificate (server.crt)") from None
    try:
        key = (x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data
               else serialization.load_pem_public_key(data))
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate or public key ({_first_line(exc)})") \
            from None
    if not isinstance(key, PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}; medfed verifies ECDSA, Ed25519 "
                          "or RSA signatures")
    return key


def public_pem(key: PrivateKey | PublicKey) -> str:
    public = key.public_key() if isinstance(key, PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_from_pem(text: str) -> PublicKey:
    key = serialization.load_pem_public_key(text.encode())
    if not isinstance(key, PublicKey):
        raise ConfigError(f"the state's audit key is a {type(key).__name__}")
    return key


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
