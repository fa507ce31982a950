"""Who signed what: the sites' signing keys for secure aggregation against a malicious server.

Bonawitz et al. 2017 (CCS), §4 and §6, the active-adversary variant: a trusted party gives every
user a signing key and everyone the verification keys, so the server can neither substitute its
own key adverts (round 0) nor show users different survivor sets (the ConsistencyCheck round). In
medfed the trusted party is the federation's certificate authority (deploy/certs.py, `medfed
certs`): a site signs with its certificate's ECDSA P-256 key and sends its certificate along; the
others accept a signature only under a certificate that

  - the federation's CA issued (its signature verifies under the CA's key),
  - is valid now, is not a CA, and is for client authentication (a site's, not the server's:
    the server holds a CA-issued key too),
  - names the claimed site as its common name.

A simulation has no certificates: `ephemeral_identities` makes a CA and the sites' keys in memory,
so the same verification runs. Signatures are ECDSA over SHA-256 of a length-prefixed encoding
(`encode`), so no two different field lists sign the same bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfed.errors import MedfedError
from medfed.types import SiteId

SIGNATURE = ec.ECDSA(hashes.SHA256())


class SignatureError(MedfedError):
    """A certificate or a signature that the federation's CA does not vouch for."""


def encode(*fields: bytes) -> bytes:
    """An unambiguous byte string of the fields (each prefixed by its 4-byte length)."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


class Trust:
    """Verifies sites' certificates against the federation's CA (each certificate checked once)."""

    def __init__(self, ca: x509.Certificate) -> None:
        self.ca = ca
        self._known: dict[tuple[bytes, SiteId], ec.EllipticCurvePublicKey] = {}

    def public_key(self, certificate: bytes, site: SiteId) -> ec.EllipticCurvePublicKey:
        """The site's verification key, if `certificate` is the CA's certificate of `site`."""
        key = self._known.get((certificate, site))
        if key is None:
            key = self._known[(certificate, site)] = self._check(certificate, site)
        return key

    def verify(self, certificate: bytes, site: SiteId, signature: bytes, message: bytes) -> None:
        try:
            self.public_key(certificate, site).verify(signature, message, SIGNATURE)
        except InvalidSignature:
            raise SignatureError(f"carries a signature that is not {site}'s") from None

    def _check(self, pem: bytes, site: SiteId) -> ec.EllipticCurvePublicKey:
        try:
            cert = x509.load_pem_x509_certificate(pem)
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise SignatureError("carries a certificate the federation's CA did not issue") from None
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SignatureError("carries a certificate that is expired or not yet valid")
        if _is_ca(cert) or not _for_clients(cert):
            raise SignatureError("carries a certificate that is not a site's (a CA's or a server's)")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [site]:
            raise SignatureError(f"carries a certificate for {names[0].value if names else 'no name'}"
                                 f", not for {site}")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SignatureError("carries a certificate whose key is not an ECDSA key")
        return key


class SigningIdentity:
    """A site's signing key, its certificate (PEM, sent with what it signs) and the CA it trusts."""

    def __init__(self, site: SiteId, key: ec.EllipticCurvePrivateKey, certificate: bytes,
                 ca: x509.Certificate) -> None:
        self.site, self.certificate, self._key = site, certificate, key
        self.trust = Trust(ca)
        if self.trust.public_key(certificate, site).public_numbers() != key.public_key().public_numbers():
            raise SignatureError(f"the certificate of {site} does not belong to its key")

    @classmethod
    def from_pem(cls, site: SiteId, certificate: bytes, key: bytes, ca: bytes) -> SigningIdentity:
        """From `medfed certs` files (deploy/certs.py's Identity: SITE.crt, SITE.key, ca.crt)."""
        private = serialization.load_pem_private_key(key, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise SignatureError(f"the key of {site} is not an ECDSA key; issue it with `medfed certs`")
        try:
            return cls(site, private, certificate, x509.load_pem_x509_certificate(ca))
        except SignatureError as exc:
            raise SignatureError(f"site {site}'s own certificate: it {exc}") from None

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, SIGNATURE)


def ephemeral_identities(sites: Iterable[SiteId]) -> dict[SiteId, SigningIdentity]:
    """A simulation's stand-in for `medfed certs`: a CA and one key and certificate per site, made
    in memory for this process only (never written, never reused)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medfed simulation CA")])
    ca = (_builder(ca_name, ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {}
    for site in sites:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)])
        cert = (_builder(name, ca_name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[site] = SigningIdentity(site, key, cert.public_bytes(serialization.Encoding.PEM), ca)
    return out


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365)))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _for_clients(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage
