"""The certificates work in gRPC's TLS stack (BoringSSL), which enforces the roles too.

A real mutual-TLS server on 127.0.0.1 with an ephemeral port; no Bastion transport code.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from bastion.pki import Role, identity_of, init_ca, issue, parse_certificate, tls_files_for

METHOD = "/bastion.test.Echo/WhoAmI"


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Name the caller from its verified client certificate, as the aggregator will."""
    pem = context.auth_context()["x509_pem_cert"][0]
    return str(identity_of(parse_certificate(pem, "peer certificate"))).encode()


def _serve(pki_dir: Path, name: str) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(_who_am_i)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bastion.test.Echo", {"WhoAmI": handler})]
    )
    ca, cert, key = tls_files_for(pki_dir, name).read()
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def _call(port: int, trust: Path, pki_dir: Path, name: str) -> bytes:
    ca = (trust / "ca.crt").read_bytes()
    _, cert, key = tls_files_for(pki_dir, name).read()
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        result: bytes = channel.unary_unary(METHOD)(b"", timeout=10)
        return result


@pytest.fixture()
def federation(pki_dir: Path) -> Iterator[tuple[Path, int]]:
    issue(pki_dir, "agg", Role.AGGREGATOR, ["127.0.0.1"])
    server, port = _serve(pki_dir, "agg")
    yield pki_dir, port
    server.stop(grace=None)


def test_collaborator_is_named_by_its_verified_certificate(federation: tuple[Path, int]) -> None:
    pki_dir, port = federation
    issue(pki_dir, "hospital-a", Role.COLLABORATOR)
    assert _call(port, pki_dir, pki_dir, "hospital-a") == b"hospital-a (collaborator)"


def test_client_of_a_foreign_ca_fails_the_handshake(
    federation: tuple[Path, int], tmp_path: Path
) -> None:
    pki_dir, port = federation
    init_ca(tmp_path / "foreign")
    issue(tmp_path / "foreign", "hospital-a", Role.COLLABORATOR)
    with pytest.raises(grpc.RpcError) as error:
        _call(port, pki_dir, tmp_path / "foreign", "hospital-a")
    assert error.value.code() is grpc.StatusCode.UNAVAILABLE


def test_model_owner_is_a_tls_client_named_by_its_certificate(
    federation: tuple[Path, int],
) -> None:
    # A model owner dials a federation service's director; the aggregator's transport
    # refuses it by role (tests/director), as it refuses anyone not a collaborator.
    pki_dir, port = federation
    issue(pki_dir, "owner", Role.MODEL_OWNER)
    assert _call(port, pki_dir, pki_dir, "owner") == b"owner (model-owner)"


def test_collaborator_certificate_cannot_pose_as_the_aggregator(pki_dir: Path) -> None:
    issue(pki_dir, "impostor", Role.COLLABORATOR, ["127.0.0.1"])
    issue(pki_dir, "hospital-a", Role.COLLABORATOR)
    server, port = _serve(pki_dir, "impostor")
    try:
        with pytest.raises(grpc.RpcError) as error:
            _call(port, pki_dir, pki_dir, "hospital-a")
        assert error.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None)
