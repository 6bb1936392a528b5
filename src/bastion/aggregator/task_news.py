"""The round observer that tells held task requests the rounds moved (long-poll GetTasks).

The gRPC server holds a waiting collaborator's ``GetTasks`` (``transport/wait.py``) until
``RoundNews`` is announced; this observer announces it when a round opens or restarts and
when the federation finishes, the only events that change what a waiting site is told.
"""

from __future__ import annotations

from bastion.aggregator.events import (
    FederationFinished,
    RoundEvent,
    RoundObserver,
    RoundRestarted,
    RoundStarted,
    TrainingStopped,
)
from bastion.transport.wait import RoundNews

_NEWS = (RoundStarted, RoundRestarted, TrainingStopped, FederationFinished)


class AnnounceRounds(RoundObserver):
    """Announces ``news`` on every event that can turn a "wait" into "run" or "done"."""

    def __init__(self, news: RoundNews) -> None:
        self.news = news

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, _NEWS):
            self.news.announce()
