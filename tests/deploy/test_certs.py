"""The federation's certificates: a CA, site and server certificates, keys only the owner reads."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from medfed.deploy import certs
from medfed.errors import ConfigError
from medfed.privacy import ckks


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_issued_certificates_chain_to_the_ca_and_keys_are_0600(tmp_path: Path):
    certs.init_ca(tmp_path)
    certs.issue(tmp_path, "site-a")
    certs.issue(tmp_path, "server", hosts=("fl.hospital.example", "10.0.0.5"))
    ca = load(tmp_path / "ca.crt")
    for name in ("site-a", "server"):
        cert = load(tmp_path / f"{name}.crt")
        cert.verify_directly_issued_by(ca)
        assert certs.common_name((tmp_path / f"{name}.crt").read_bytes()) == name
    for key in tmp_path.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    san = load(tmp_path / "server.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["fl.hospital.example"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    usage = load(tmp_path / "site-a.crt").extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_the_server_certificate_names_loopback_by_default(tmp_path: Path):
    certs.init_ca(tmp_path)
    certs.issue(tmp_path, "server")
    san = load(tmp_path / "server.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_mistakes_are_one_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="certs init"):
        certs.issue(tmp_path, "site-a")
    certs.init_ca(tmp_path)
    with pytest.raises(ConfigError, match="already holds"):
        certs.init_ca(tmp_path)
    with pytest.raises(ConfigError, match="must be letters"):
        certs.issue(tmp_path, "../evil")
    with pytest.raises(ConfigError, match="missing"):
        certs.load_identity(tmp_path, "site-b")


@pytest.mark.skipif(not ckks.available(), reason="homomorphic encryption needs TenSEAL: "
                                                  "pip install 'medfed[he]'")
def test_sites_get_the_secret_ckks_context_and_the_server_the_public_one(tmp_path: Path):
    certs.init_ca(tmp_path)
    site, server = certs.issue_context(tmp_path, "site-a"), certs.issue_context(tmp_path, "server")
    other = certs.issue_context(tmp_path, "site-b")
    assert stat.S_IMODE(site.stat().st_mode) == 0o600 and site.read_bytes() == other.read_bytes()
    assert stat.S_IMODE((tmp_path / certs.CONTEXT).stat().st_mode) == 0o600
    assert ckks.load(site.read_bytes(), private=True).is_private()
    assert not ckks.load(server.read_bytes(), private=False).is_private()
    with pytest.raises(ConfigError, match="add --force"):
        certs.issue_context(tmp_path, "site-a")
    assert certs.load_context(tmp_path, "site-c") is None
