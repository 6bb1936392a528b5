"""One process at a time: an exclusive lock on a directory's state, held for a process's life.

Two aggregators serving one workspace split the federation in two (each site reaches one,
each waits for the sites it never sees). The aggregator holds this lock on its
checkpoint directory from start to exit; a second one is refused in one line naming the
process that holds it. The lock is the kernel's (``flock``): it dies with its process,
so a ``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from bastion.errors import BastionError

LOCK_FILE = ".lock"


class AlreadyRunning(BastionError):
    """Another process holds the lock."""


class ExclusiveLock:
    """``with ExclusiveLock(directory, "aggregator"):`` — refused while another holds it."""

    def __init__(self, directory: Path, holder: str) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> ExclusiveLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another {self.holder} ({self._describe_holder()}) already serves "
                f"{self.path.parent}; stop it first (one {self.holder} per workspace)"
            ) from None
        os.ftruncate(fd, 0)
        record = {
            "holder": self.holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
        }
        os.write(fd, json.dumps(record).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _describe_holder(self) -> str:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {int(record['pid'])} on {record.get('host', '?')}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process whose pid is unknown"

    def __enter__(self) -> ExclusiveLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()
