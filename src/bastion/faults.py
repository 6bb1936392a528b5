"""Deterministic fault points: a test names a point, the process fails exactly there.

``BASTION_FAULT`` holds one or more specs separated by ``;``::

    <point>[@<detail>]:<action>[:<nth>]

``point`` is a name passed to ``point()`` at a fixed place in the code (``engine.checkpoint``,
``atomic.before_rename``, ``secure.share_keys`` …); ``detail`` narrows it (the file name of an
atomic write); ``nth`` is the matching hit that fires (1 by default; ``3+`` fires from the
third on). Actions: ``kill`` (SIGKILL this process), ``stop`` (SIGSTOP it; the test sends
SIGCONT), ``enospc`` / ``eio`` / ``erofs`` (raise that ``OSError``), ``exit`` (``os._exit(75)``).
When ``BASTION_FAULT_LOG`` names a file, each firing appends ``<pid> <point> <detail> <action>``
to it first, so a test knows the fault happened rather than guessing from a sleep.

Unset (production), ``point()`` is one global load and a return: no parsing, no allocation.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

ENV = "BASTION_FAULT"
LOG_ENV = "BASTION_FAULT_LOG"
ACTIONS = ("kill", "stop", "enospc", "eio", "erofs", "exit")
_ERRNOS = {"enospc": errno.ENOSPC, "eio": errno.EIO, "erofs": errno.EROFS}


@dataclass
class _Spec:
    point: str
    detail: str | None
    action: str
    nth: int
    onwards: bool
    hits: int = 0

    def matches(self, point: str, detail: str) -> bool:
        if point != self.point or (self.detail is not None and self.detail != detail):
            return False
        self.hits += 1
        return self.hits >= self.nth if self.onwards else self.hits == self.nth


def parse(text: str) -> list[_Spec]:
    """The specs of ``text``; a malformed one raises ``ValueError`` (a test's typo, loudly)."""
    specs = []
    for raw in filter(None, (part.strip() for part in text.split(";"))):
        fields = raw.split(":")
        if len(fields) not in (2, 3) or fields[1] not in ACTIONS:
            raise ValueError(f"{ENV}: {raw!r} is not <point>[@<detail>]:<action>[:<nth>[+]]")
        name, _, detail = fields[0].partition("@")
        count = fields[2] if len(fields) == 3 else "1"
        onwards = count.endswith("+")
        specs.append(_Spec(name, detail or None, fields[1], int(count.rstrip("+")), onwards))
    return specs


_SPECS: list[_Spec] | None = parse(os.environ[ENV]) if os.environ.get(ENV) else None


def point(name: str, detail: str = "") -> None:
    """A named place where an armed fault fires; nothing at all when none is armed."""
    if _SPECS is None:
        return
    for spec in _SPECS:
        if spec.matches(name, detail):
            _fire(spec, name, detail)


def arm(text: str | None) -> None:
    """Arm ``text`` in this process (in-process tests); ``None`` disarms."""
    global _SPECS
    _SPECS = parse(text) if text else None


def _fire(spec: _Spec, name: str, detail: str) -> None:
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {name} {detail or '-'} {spec.action}\n")
            handle.flush()
            os.fsync(handle.fileno())
    if spec.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif spec.action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif spec.action == "exit":
        os._exit(75)
    else:
        code = _ERRNOS[spec.action]
        raise OSError(code, f"{os.strerror(code)} (injected at {name})")
