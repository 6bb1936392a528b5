"""Addresses mean what they say, and a failed dial is explained in the user's terms."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bastion.pki import Role, init_ca, issue, tls_files_for
from bastion.spec.network import Address, AddressError, check_port, parse_address
from bastion.transport.diagnose import explain_unreachable


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agg.example.org", Address("agg.example.org", 50051)),
        ("agg.example.org:6000", Address("agg.example.org", 6000)),
        ("127.0.0.1", Address("127.0.0.1", 50051)),
        ("127.0.0.1:1", Address("127.0.0.1", 1)),
        ("[::1]:7000", Address("::1", 7000)),
        ("[::1]", Address("::1", 50051)),
        ("::1", Address("::1", 50051)),
    ],
)
def test_a_missing_port_is_the_plans_port(text: str, expected: Address) -> None:
    assert parse_address(text, 50051) == expected


def test_ipv6_targets_are_bracketed() -> None:
    assert parse_address("[::1]:7000", 1).target == "[::1]:7000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://agg.example.org", "has a scheme (https://)"),
        ("grpc://agg:5", "has a scheme (grpc://)"),
        ("agg:70000", "is not a TCP port"),
        ("agg:0", "is not a TCP port"),
        ("agg:http", "is not a number"),
        ("", "is empty"),
        ("a b", "is not a host name"),
        ("[::1", "closing ']'"),
    ],
)
def test_bad_addresses_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_address(text, 50051)


def test_ports_are_checked() -> None:
    assert check_port(0, allow_zero=True) == 0
    for bad in (0, -1, 65536, 70000):
        with pytest.raises(AddressError, match="1..65535"):
            check_port(bad)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _serving(handler) -> Iterator[int]:  # noqa: ANN001 - a small test helper
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                handler(connection)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


def _tls_server(pki: Path, name: str):  # noqa: ANN202
    files = tls_files_for(pki, name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.cert), str(files.key))

    def handle(connection: socket.socket) -> None:
        try:
            with context.wrap_socket(connection, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    return handle


def test_nothing_listening() -> None:
    reason, permanent = explain_unreachable(Address("127.0.0.1", _free_port()), None)
    assert not permanent
    assert "nothing is listening at 127.0.0.1:" in reason and "connection refused" in reason


def test_an_unresolvable_name() -> None:
    reason, permanent = explain_unreachable(Address("no-such-host.invalid", 5), None)
    assert not permanent
    assert "cannot resolve the aggregator's host name 'no-such-host.invalid'" in reason


def test_a_server_that_does_not_speak_tls() -> None:
    with _serving(lambda c: c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")) as port:
        reason, permanent = explain_unreachable(Address("127.0.0.1", port), None)
    assert permanent and "does not speak TLS" in reason


def test_a_tls_name_mismatch_names_both_names(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_ca(pki)
    issue(pki, "aggregator", Role.AGGREGATOR, hosts=["agg.example.org"])
    with _serving(_tls_server(pki, "aggregator")) as port:
        reason, permanent = explain_unreachable(
            Address("127.0.0.1", port), (pki / "ca.crt").read_bytes()
        )
    assert permanent
    assert reason.startswith("TLS name mismatch: you dialled '127.0.0.1'")
    assert "'agg.example.org'" in reason


def test_a_certificate_from_another_ca(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    init_ca(ours)
    init_ca(theirs, common_name="Other Federation CA")
    issue(theirs, "aggregator", Role.AGGREGATOR, hosts=["127.0.0.1"])
    with _serving(_tls_server(theirs, "aggregator")) as port:
        reason, permanent = explain_unreachable(
            Address("127.0.0.1", port), (ours / "ca.crt").read_bytes()
        )
    assert permanent and "not by this federation's CA" in reason
