"""gRPC settings both ends share: message limits, keepalive, and mutual-TLS credentials.

Keepalive pings every 30 s keep a channel open through NATs and firewalls while a site trains for
hours without sending anything; the server accepts pings that often even without an active call.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import TYPE_CHECKING

import grpc

from medfed.errors import ConfigError
from medfed.transport.chunks import MESSAGE_LIMIT

if TYPE_CHECKING:
    from medfed.deploy.certs import Identity

KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
LIMITS = [("grpc.max_send_message_length", MESSAGE_LIMIT),
          ("grpc.max_receive_message_length", MESSAGE_LIMIT)]
SERVER_OPTIONS = [*KEEPALIVE, *LIMITS, ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]
CLIENT_OPTIONS = [*KEEPALIVE, *LIMITS]


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """Mutual TLS: a client must present a certificate signed by the federation's authority."""
    return grpc.ssl_server_credentials([(identity.key, identity.certificate)],
                                       root_certificates=identity.ca, require_client_auth=True)


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """The server's certificate is checked against the federation's authority and the host name."""
    return grpc.ssl_channel_credentials(root_certificates=identity.ca, private_key=identity.key,
                                        certificate_chain=identity.certificate)


def allow_insecure(address: str, who: str) -> None:
    """--insecure: only on a loopback address, and never quietly."""
    if not is_loopback(address):
        raise ConfigError(f"--insecure is refused for {address}: without TLS only a loopback "
                          "address (127.0.0.1, ::1, localhost) is allowed")
    sys.stderr.write(f"WARNING: medfed {who} is running WITHOUT TLS (--insecure): no encryption, no "
                     "authentication. For a test on this machine only.\n")


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"address must be HOST:PORT (e.g. 127.0.0.1:50051), got '{address}'")
    return host.strip("[]"), int(port)


def is_loopback(address: str) -> bool:
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
