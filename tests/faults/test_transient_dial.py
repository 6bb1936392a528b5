"""An aggregator that dies (kill -9) or restarts during a site's diagnosis dial is transient.

Found by test_aggregator_killed_at_point[engine.assign]: the probe's TLS handshake met a
reset from the dying aggregator, was diagnosed "does not speak TLS" (permanent), and the
honest collaborator exited for good instead of waiting for the restart.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bastion.spec.network import Address
from bastion.transport.diagnose import explain_unreachable


@contextmanager
def _serving(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        connection, _ = server.accept()
        handle(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        thread.join(timeout=5)
        server.close()


def _reset(connection: socket.socket) -> None:
    connection.recv(1)  # the ClientHello has arrived
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def _hang_up(connection: socket.socket) -> None:
    connection.recv(1)
    connection.close()


def test_a_reset_during_the_handshake_is_not_permanent() -> None:
    with _serving(_reset) as port:
        reason, permanent = explain_unreachable(Address("127.0.0.1", port), None)
    assert not permanent, reason
    assert "closed the connection during the TLS handshake" in reason


def test_a_hang_up_during_the_handshake_is_not_permanent() -> None:
    with _serving(_hang_up) as port:
        reason, permanent = explain_unreachable(Address("127.0.0.1", port), None)
    assert not permanent, reason
