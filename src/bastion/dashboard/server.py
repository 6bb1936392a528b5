"""Serving the dashboard (uvicorn, in a thread of the director's or aggregator's process)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

from bastion.errors import BastionError

try:
    import starlette  # noqa: F401
    import uvicorn
except ModuleNotFoundError as exc:  # an optional extra
    raise BastionError(
        f"the dashboard needs {exc.name}: pip install 'bastion-fl[dashboard]'"
    ) from None

from bastion.dashboard.app import create_app
from bastion.dashboard.auth import TokenStore, is_loopback
from bastion.dashboard.sources import Source

log = logging.getLogger("bastion.dashboard")


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); port 0 picks one."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise BastionError(f"--dashboard {address!r}: expected HOST:PORT") from None
    if not 0 <= number < 65536:
        raise BastionError(f"--dashboard {address!r}: port out of range")
    return host, number


class DashboardServer:
    """The dashboard on ``host:port``; a non-loopback host needs a token file to start."""

    def __init__(
        self,
        source: Source,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens_file: Path | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        tokens = TokenStore(tokens_file) if tokens_file is not None else None
        if tokens is None and not is_loopback(host):
            raise BastionError(
                f"the dashboard on {host} (not loopback) requires authentication: create a "
                "token with `bastion dashboard token create` and pass --dashboard-tokens FILE"
            )
        if tokens is not None and not tokens.identities():
            raise BastionError(f"{tokens.path}: no tokens yet (bastion dashboard token create)")
        self.host = host
        self.scheme = "https" if certfile else "http"
        self.app = create_app(source, tokens)
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            raise BastionError(f"dashboard: cannot listen on {host}:{port}: {exc}") from None
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
            name="dashboard",
        )  # fmt: skip

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    def start(self) -> DashboardServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("dashboard on %s", self.url)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()
