"""Long-poll ``GetTasks``: a collaborator told to wait hears of its next task at once.

Without it a waiting collaborator sleeps ``retry_after`` (``timeouts.poll_seconds``,
0.5 s by default) between task requests, so each round starts on average a quarter of a
second late at every site: a third of a small model's round. ``TaskWaiter`` holds a
"wait" answer on the server for up to ``hold_seconds`` and asks the port again as soon as
``RoundNews`` says the federation moved (a round opened, restarted or closed, the
federation finished), or every ``interval`` when nobody announces news. If the hold runs
out the answer tells the collaborator to ask again at once, so it is back in the next hold
within a round trip. The wire protocol and the collaborator are unchanged. Holds are
bounded (``max_waiting``) so waiting sites never take every server thread; past that bound
the answer comes at once, as before.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from bastion.protocol import Assignment

#: How soon a collaborator whose hold ran out asks again (its next hold starts then).
ASK_AGAIN_SECONDS = 0.001


class RoundNews:
    """A counter that moves whenever the federation's state may have changed.

    The side that owns the rounds calls ``announce()`` (the aggregator's round observer);
    ``TaskWaiter`` blocks on ``wait_after`` instead of polling the port.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._version = 0
        self._stopped = False

    @property
    def version(self) -> int:
        with self._changed:
            return self._version

    def announce(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def stop(self) -> None:
        """Release every waiter now and for good (the server is stopping)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def wait_after(self, seen: int, timeout: float) -> int:
        """Block until the version is past ``seen``, ``timeout`` passes or news stops."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen or self._stopped, timeout)
            return self._version


class TaskWaiter:
    """Answers task requests, holding "wait" answers until there is work (bounded).

    ``news``: announced when the rounds move, so a hold asks the port again only then;
    without it a hold asks every ``interval`` (an in-process call, no network).
    """

    def __init__(
        self,
        get_tasks: Callable[[str], Assignment],
        news: RoundNews | None = None,
        hold_seconds: float = 2.0,
        interval: float | None = None,
        max_waiting: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._get_tasks = get_tasks
        self._hold = hold_seconds
        # With news announced, the port is asked again only when it moved; without, polled.
        if interval is None:
            interval = hold_seconds if news is not None else 0.05
        self.news = news or RoundNews()
        self._interval = interval
        self._slots = threading.BoundedSemaphore(max(1, max_waiting))
        self._clock = clock

    def stop(self) -> None:
        """Release every hold now (the server is stopping)."""
        self.news.stop()

    def get_tasks(self, collaborator: str) -> Assignment:
        seen = self.news.version
        assignment = self._get_tasks(collaborator)
        if assignment.action != "wait" or self._hold <= 0 or self.news.stopped:
            return assignment
        if not self._slots.acquire(blocking=False):
            return assignment
        try:
            deadline = self._clock() + min(self._hold, 4 * assignment.retry_after)
            while (left := deadline - self._clock()) > 0:
                seen = self.news.wait_after(seen, min(left, self._interval))
                if self.news.stopped:
                    return assignment
                assignment = self._get_tasks(collaborator)
                if assignment.action != "wait":
                    return assignment
            return dataclasses.replace(assignment, retry_after=ASK_AGAIN_SECONDS)
        finally:
            self._slots.release()
