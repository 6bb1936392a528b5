"""Overhead accounting: bytes on the wire and seconds spent, per protocol stage."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class Stage(enum.Enum):
    """The five rounds of Bonawitz et al. 2017, Figure 4 (malicious-server version)."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"


@dataclass
class StageStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


@dataclass
class ProtocolStats:
    """What one party spent on secure aggregation in one round."""

    stages: dict[Stage, StageStats] = field(
        default_factory=lambda: {stage: StageStats() for stage in Stage}
    )

    def sent(self, stage: Stage, nbytes: int) -> None:
        self.stages[stage].bytes_sent += nbytes

    def received(self, stage: Stage, nbytes: int) -> None:
        self.stages[stage].bytes_received += nbytes

    @contextmanager
    def timed(self, stage: Stage) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage].seconds += time.perf_counter() - start

    @property
    def total(self) -> StageStats:
        return StageStats(
            bytes_sent=sum(s.bytes_sent for s in self.stages.values()),
            bytes_received=sum(s.bytes_received for s in self.stages.values()),
            seconds=sum(s.seconds for s in self.stages.values()),
        )

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Flat figures for the metrics log."""
        return {
            stage.value: {
                "bytes_sent": s.bytes_sent,
                "bytes_received": s.bytes_received,
                "seconds": s.seconds,
            }
            for stage, s in self.stages.items()
        }
