"""A TCP proxy on 127.0.0.1 that misbehaves on demand: the network between a site and the aggregator.

It forwards bytes (TLS passes through untouched) and, as the test asks, adds latency and
jitter, caps bandwidth, drops a connection mid-stream, resets every connection, stops
forwarding while keeping sockets open (half-open), or partitions the site entirely (new
connections are accepted and then held silent, as a black-holed route looks) until healed.
It runs its own asyncio loop in a daemon thread; every control method is thread-safe.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    forwarded: int = 0

    def abort(self, reset: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:  # SO_LINGER 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


@dataclass(eq=False)
class FaultProxy:
    upstream_port: int
    seed: int = 0
    latency: float = 0.0  # seconds added to every chunk, each way
    jitter: float = 0.0  # uniform ± on top of latency
    bandwidth: float | None = None  # bytes per second, each way
    drop_after: int | None = None  # abort the next connection that forwards this many bytes
    blackhole: bool = False  # forward nothing, accept and hold new connections
    port: int = 0
    connections: int = 0
    dropped: int = 0
    forwarded: int = 0  # bytes forwarded over every connection so far, both ways
    links: set[_Link] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self.port

    def reset_all(self) -> int:
        """RST every open connection (both sides); how many there were."""
        return asyncio.run_coroutine_threadsafe(self._reset_all(), self._loop).result(5)

    def partition(self) -> None:
        self.blackhole = True

    def heal(self) -> None:
        self.blackhole = False

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ forwarding

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=256)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for link in list(self.links):
                link.abort(reset=False)
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _reset_all(self) -> int:
        links = list(self.links)
        for link in links:
            link.abort(reset=True)
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer)
        self.links.add(link)
        try:
            for _ in range(100_000):  # a partitioned site's connection hangs, bounded
                if not self.blackhole:
                    break
                await asyncio.sleep(0.05)
            up_reader, link.upstream = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
            await asyncio.gather(
                self._pipe(reader, link.upstream, link), self._pipe(up_reader, writer, link)
            )
        except (ConnectionError, OSError):
            pass
        finally:
            link.abort(reset=False)
            self.links.discard(link)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        while data := await source.read(64 * 1024):
            for _ in range(100_000):  # half-open: bytes stop, sockets stay up
                if not self.blackhole:
                    break
                await asyncio.sleep(0.05)
            delay = max(0.0, self.latency + self._rng.uniform(-self.jitter, self.jitter))
            if self.bandwidth:
                delay += len(data) / self.bandwidth
            if delay:
                await asyncio.sleep(delay)
            sink.write(data)
            await sink.drain()
            link.forwarded += len(data)
            self.forwarded += len(data)
            if self.drop_after is not None and link.forwarded >= self.drop_after:
                self.drop_after = None  # once: the next connection goes through
                self.dropped += 1
                link.abort(reset=True)
                return
        if sink.can_write_eof():
            sink.write_eof()
