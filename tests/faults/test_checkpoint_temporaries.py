"""A crash between a checkpoint's temp write and its rename leaves a file only startup can clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bastion.storage.atomic import discard_temporaries
from bastion.storage.checkpoints import LAST, CheckpointStore, RoundState


def test_startup_discards_temporaries_of_interrupted_checkpoint_writes(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "hash")
    model = {"w": np.arange(4, dtype=np.float32)}
    store.save_initial(model)
    store.save_round(model, {}, RoundState(round_completed=2))
    # What kill -9 between atomic_writer's fsync and os.replace leaves behind.
    stale = [tmp_path / ".last.safetensors.abc123.tmp", tmp_path / ".best.safetensors.x.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 64)
    other = tmp_path / ".unrelated.tmp"
    other.write_bytes(b"keep")

    resumed = store.load()

    assert resumed.state.round_completed == 2 and resumed.source.name == LAST
    assert not any(p.exists() for p in stale)
    assert other.exists()


def test_discard_temporaries_on_a_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    assert discard_temporaries(tmp_path / "absent" / "last.safetensors") == []
