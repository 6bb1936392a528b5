"""What one identity may hold of the aggregator's server: streams, uploads, time.

gRPC's synchronous server gives each RPC a worker thread for as long as its handler runs,
and a handler reading a client stream blocks for as long as the client sends nothing. So
every stream here is watched: a stream with no message for ``idle_timeout`` seconds, or
open longer than ``receive_deadline``, is cancelled (which wakes its handler); an identity
holds at most ``streams_per_peer`` RPCs and one upload at a time; uploads that carry
tensors share ``upload_slots`` (memory is O(model) per slot), and a slot is taken only
when the first tensor arrives, so a result without tensors never waits for one.
Refusals are logged once per peer, certificate serial and reason per interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from bastion.errors import ProtocolError
from bastion.protocol import Busy

log = logging.getLogger("bastion.transport")

T = TypeVar("T")

#: Metadata every collaborator call carries, so the plan is checked before any stream is read.
PLAN_HEADER = "x-bastion-plan-hash"
MEASUREMENT_HEADER = "x-bastion-workspace-measurement"
#: Trailing metadata of a task reply: the caller's signed audit receipts, one per value.
RECEIPT_HEADER = "x-bastion-receipt-bin"


@dataclass(frozen=True)
class StreamLimits:
    """The plan's ``network`` bounds on what one identity may hold (seconds, counts)."""

    idle_timeout: float = 60.0
    receive_deadline: float = 3600.0
    streams_per_peer: int = 4
    upload_slots: int = 2
    refusal_log_interval: float = 300.0

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0 or self.receive_deadline <= 0:
            raise ValueError("stream timeouts must be positive")
        if self.streams_per_peer < 1 or self.upload_slots < 1:
            raise ValueError("streams_per_peer and upload_slots must be at least 1")


@dataclass
class Watched:
    """One stream under watch: when it last moved, whether the server is waiting on the
    peer, and why it was cut (if it was)."""

    context: grpc.ServicerContext
    peer: str
    serial: str
    what: str
    started: float
    last: float
    waiting: bool = False
    expired: str | None = None

    def touch(self) -> None:
        self.last = time.monotonic()

    @property
    def idle_since(self) -> float | None:
        """Since when the peer has kept the server waiting, or None while it is not."""
        return self.last if self.waiting else None

    @contextlib.contextmanager
    def waiting_on_peer(self) -> Iterator[None]:
        """The peer's turn: its next message, or reading what was yielded to it."""
        self.touch()
        self.waiting = True
        try:
            yield
        finally:
            self.waiting = False
            self.touch()


class RefusalLog:
    """Log a refusal once per (peer, certificate serial, reason) per interval."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[tuple[str, str, str], float] = {}
        self._suppressed: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def refused(self, peer: str, serial: str, reason: str, message: str) -> bool:
        """Log ``message`` unless the same refusal was logged within the interval."""
        key = (peer, serial, reason)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            if len(self._last) > 10_000:  # a flood of identities cannot grow this without bound
                self._last.clear()
            self._last[key] = now
            again = self._suppressed.pop(key, 0)
        more = f" (and {again} more like it)" if again else ""
        log.warning("refused %s [serial %s]: %s%s", peer, serial or "-", message, more)
        return True


class PeerStreams:
    """Per-identity stream and upload accounting, and the watchdog that cuts idle streams."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self.refusals = RefusalLog(limits.refusal_log_interval)
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._uploading: set[str] = set()
        self._slots = threading.BoundedSemaphore(limits.upload_slots)
        self._watched: set[int] = set()
        self._by_id: dict[int, Watched] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="bastion-stream-watch", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def stream(
        self, peer: str, serial: str, context: grpc.ServicerContext, what: str
    ) -> Iterator[Watched]:
        """Hold one of ``peer``'s streams while the block runs, watched for idleness."""
        with self._lock:
            if self._open.get(peer, 0) >= self.limits.streams_per_peer:
                raise Busy(
                    f"{peer} already has {self.limits.streams_per_peer} calls open; "
                    "finish one before starting another"
                )
            self._open[peer] = self._open.get(peer, 0) + 1
            now = time.monotonic()
            watched = Watched(context, peer, serial, what, now, now)
            self._by_id[id(watched)] = watched
        try:
            yield watched
        finally:
            with self._lock:
                self._by_id.pop(id(watched), None)
                left = self._open.get(peer, 1) - 1
                if left:
                    self._open[peer] = left
                else:
                    self._open.pop(peer, None)

    @contextlib.contextmanager
    def upload(self, peer: str) -> Iterator[None]:
        """One upload per identity at a time: a second is refused, never queued."""
        with self._lock:
            if peer in self._uploading:
                raise Busy(f"{peer} is already sending a result; one upload per site at a time")
            self._uploading.add(peer)
        try:
            yield
        finally:
            with self._lock:
                self._uploading.discard(peer)

    @contextlib.contextmanager
    def slot(self, watched: Watched) -> Iterator[None]:
        """One of the shared upload slots; the wait is the server's, not the peer's idleness."""
        while not self._slots.acquire(timeout=0.25):
            if watched.expired is not None or not watched.context.is_active():
                raise ProtocolError(watched.expired or "the upload was cancelled")
        try:
            yield
        finally:
            self._slots.release()

    def received(self, watched: Watched, messages: Iterator[T]) -> Iterator[T]:
        """``messages`` with each arrival noted; a stream cut for idleness ends in a
        ``ProtocolError`` naming why, not in gRPC's bare cancellation."""
        while True:
            try:
                with watched.waiting_on_peer():
                    message = next(messages)
            except StopIteration:
                return
            except grpc.RpcError:
                if watched.expired is not None:
                    raise ProtocolError(watched.expired) from None
                raise
            except Exception:
                if watched.expired is not None:
                    raise ProtocolError(watched.expired) from None
                raise
            yield message

    def sent(self, watched: Watched, messages: Iterator[T]) -> Iterator[T]:
        """``messages`` going out; a peer that stops reading them is cut too (a yield
        returns only once gRPC takes the next message, which waits on the peer)."""
        for message in messages:
            with watched.waiting_on_peer():
                yield message

    def _watch(self) -> None:
        step = max(0.02, min(1.0, self.limits.idle_timeout / 5))
        while not self._stop.wait(step):
            now = time.monotonic()
            with self._lock:
                streams = list(self._by_id.values())
            for watched in streams:
                if watched.expired is not None:
                    continue
                reason = None
                if now - watched.started > self.limits.receive_deadline:
                    reason = f"stream open longer than {self.limits.receive_deadline:g}s"
                elif (
                    idle := watched.idle_since
                ) is not None and now - idle > self.limits.idle_timeout:
                    reason = f"stream idle for more than {self.limits.idle_timeout:g}s"
                if reason is None:
                    continue
                watched.expired = reason
                self.refusals.refused(
                    watched.peer, watched.serial, "idle", f"{watched.what}: {reason}"
                )
                watched.context.cancel()
