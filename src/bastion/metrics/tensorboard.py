"""TensorBoard event files, written with TensorBoard's own writer and protos (no TensorFlow
or torch): ``tensorboard --logdir WORKSPACE/logs/tensorboard`` shows a federation."""

from __future__ import annotations

import time
from pathlib import Path

from bastion.errors import BastionError

try:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
except ModuleNotFoundError:  # the optional `tensorboard` extra
    EventFileWriter = None

TENSORBOARD_DIR = "tensorboard"


def available() -> bool:
    return EventFileWriter is not None


class TensorBoardWriter:
    """Scalars into one event file under ``logdir``."""

    def __init__(self, logdir: Path) -> None:
        if EventFileWriter is None:
            raise BastionError("TensorBoard files need: pip install 'bastion-fl[tensorboard]'")
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.logdir), flush_secs=2)

    def scalar(self, tag: str, value: float, step: int) -> None:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))]
        )
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
