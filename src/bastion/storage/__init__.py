"""Durable files: the one atomic write, and the checkpoints built on it (base layer)."""

from bastion.storage.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    fsync_directory,
)
from bastion.storage.checkpoints import (
    BEST,
    INITIAL,
    LAST,
    STATE,
    CheckpointStore,
    Resumed,
    RoundState,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "BEST",
    "INITIAL",
    "LAST",
    "STATE",
    "CheckpointStore",
    "Resumed",
    "RoundState",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_writer",
    "fsync_directory",
    "load_checkpoint",
    "save_checkpoint",
]
