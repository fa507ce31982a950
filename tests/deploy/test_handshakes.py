"""gRPC core's log lines about refused TLS handshakes, read as audit reasons."""

from __future__ import annotations

from medfed.deploy.handshakes import GRPC_INFO, reason_of

PREFIX = b"I1123 03:51:09.640937    8893 ssl_transport_security.cc:2563] Handshake failed with error "


def test_refusals_are_named():
    assert reason_of(PREFIX + b"SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:"
                              b"PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate") == \
        "no client certificate"
    assert reason_of(PREFIX + b"SSL_ERROR_SSL: error:1a000064:ECDSA routines:OPENSSL_internal:"
                              b"BAD_SIGNATURE: certificate signature failure") == \
        "certificate not signed by the federation's authority"
    assert reason_of(PREFIX + b"SSL_ERROR_SSL: something new").startswith("TLS handshake failed")


def test_other_lines_are_not_refusals_and_only_grpc_info_is_dropped():
    assert reason_of(b"medfed server: round 1 closed\n") is None
    assert GRPC_INFO.search(b"I1123 04:00:00.0 1 chttp2_transport.cc:1] something")
    assert not GRPC_INFO.search(b"E1123 04:00:00.0 1 server.cc:1] a real error")
    assert not GRPC_INFO.search(b"medfed server: listening")
