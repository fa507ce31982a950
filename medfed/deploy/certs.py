"""The federation's certificates: one certificate authority, a certificate per site and one for the
server. A site's identity is its certificate's common name; the server's certificate names the host
names and IP addresses it is reached at (subject alternative names) so clients can check them.

Files in a certificates folder: ca.crt (share it with everyone), ca.key (keep it on the machine that
issues certificates, never on a site), NAME.crt and NAME.key per issued name. Private keys are
written with mode 0600 and are never logged.

A federation with homomorphic encryption also has one CKKS context (privacy/ckks.py), made the
first time one is issued: federation.ckks (its secret key; kept with ca.key), NAME.ckks for each
site (the same secret context, 0600, beside the site's key: the sites encrypt and decrypt) and
server.ckks (the parameters only: the server adds ciphertexts and can decrypt none).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfed.deploy.signatures import load_private_key, public_pem
from medfed.errors import ConfigError

CA_NAME = "ca"
SERVER_NAME = "server"
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1")
VALID_DAYS = 825
CA_VALID_DAYS = 3650
HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Identity:
    """The PEM bytes a process presents: its certificate chain, its key, and the CA it trusts."""

    certificate: bytes
    key: bytes
    ca: bytes


def init_ca(out: Path, name: str = "medfed federation CA") -> Path:
    """Create ca.key and ca.crt in out; refuses to overwrite an existing authority."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.key").exists() or (out / "ca.crt").exists():
        raise ConfigError(f"{out} already holds a certificate authority (ca.crt / ca.key); "
                          "use another folder or remove them first")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(out / "ca.key", key)
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / "ca.crt"


def issue(out: Path, name: str, hosts: tuple[str, ...] = (), force: bool = False) -> Path:
    """Issue NAME.crt and NAME.key signed by the CA in out. With hosts (or for the name "server")
    the certificate is a server certificate for those host names and IPs; otherwise a site's.
    An existing NAME.key is replaced only with force (a key in use would stop working)."""
    _check_name(name)
    for host in hosts:
        _check_host(host)
    ca_key, ca_cert = _load_ca(out)
    if not force and ((out / f"{name}.key").exists() or (out / f"{name}.crt").exists()):
        raise ConfigError(f"{out} already holds {name}.key / {name}.crt; add --force to replace "
                          "them (whoever uses the old key must then get the new one)")
    server = bool(hosts) or name == SERVER_NAME
    hosts = hosts or (DEFAULT_SERVER_HOSTS if server else ())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]),
                                        critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(out / f"{name}.key", key)
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / f"{name}.crt"


CONTEXT = "federation.ckks"  # the federation's secret CKKS context, kept with the CA


def issue_context(out: Path, name: str, force: bool = False) -> Path:
    """NAME.ckks: the federation's secret CKKS context for a site, the public one for the server."""
    from medfed.privacy import ckks  # TenSEAL only for federations that ask for it

    _check_name(name)
    _load_ca(out)  # the context belongs with the authority that issues the federation's names
    path = out / f"{name}.ckks"
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; add --force to replace it (every site must then get "
                          "the new context, or their ciphertexts will not add up)")
    if not (out / CONTEXT).exists():
        secret, _ = ckks.new_context()
        _write_private(out / CONTEXT, secret)
    secret = (out / CONTEXT).read_bytes()
    if name == SERVER_NAME:
        path.write_bytes(ckks.public_of(ckks.load(secret, private=True)))
    else:
        _write_private(path, secret)
    return path


def load_context(folder: Path | None, name: str) -> bytes | None:
    """NAME.ckks from a certificates folder, or None when there is none."""
    path = (folder or Path()) / f"{name}.ckks"
    return path.read_bytes() if folder is not None and path.is_file() else None


def load_identity(folder: Path, name: str) -> Identity:
    """NAME.crt, NAME.key and ca.crt from a certificates folder, with a clear error if missing."""
    paths = [folder / f"{name}.crt", folder / f"{name}.key", folder / "ca.crt"]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"missing {path}; create it with `medfed certs init` / "
                              f"`medfed certs issue --name {name}`")
    cert, key, ca = (p.read_bytes() for p in paths)
    _check_pair(paths[0], paths[1], paths[2])
    return Identity(certificate=cert, key=key, ca=ca)


def _check_pair(cert_path: Path, key_path: Path, ca_path: Path) -> None:
    """PEM files that parse, and a key that belongs to its certificate: gRPC would otherwise fail
    later, deep in its C core, without saying which file is wrong."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        x509.load_pem_x509_certificate(ca_path.read_bytes())
    except ValueError:
        raise ConfigError(f"{cert_path} or {ca_path} is not a PEM certificate; issue it again "
                          "with `medfed certs`") from None
    key = load_private_key(key_path)
    if public_pem(key) != public_pem(certificate.public_key()):
        raise ConfigError(f"{key_path} is not the key of {cert_path}; issue both again with "
                          "`medfed certs issue --force`")


def common_name(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _load_ca(folder: Path):
    try:
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no certificate authority in {folder}; run `medfed certs init --out "
                          f"{folder}` first") from None
    return key, cert


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def _write_private(path: Path, data: bytes) -> None:
    """Created with mode 0600 from the start: a secret is never readable by others, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(f"--hosts: '{host}' is neither an IP address nor a host name (letters, "
                          "digits and '-' between dots, e.g. fl.example.org)")


def _check_name(name: str) -> None:
    if not name or name == CA_NAME or not all(c.isalnum() or c in "-_." for c in name) \
            or name.startswith("."):
        raise ConfigError(f"certificate name '{name}' must be letters, digits, '-', '_' or '.', "
                          f"and not '{CA_NAME}'")
